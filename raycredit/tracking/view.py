"""How the MLflow UI opens a search's experiment: on its runs, grouped by rule, with the searched knobs and the
accuracy as columns.

MLflow 3.17's UI shows an experiment in its GenAI layout (Traces, Judges, Prompts) unless the page's URL says
`workflowType=machine_learning` or the browser last chose "Model training"; the experiment's
`mlflow.experimentKind` tag does not change it while the UI has that switch (its bundle reads the URL, then the
browser's localStorage key `mlflow.workflowType`). Its runs table shows no param or metric column until chosen.
Both are set through the UI's own mechanism for a shared view: an experiment tag `mlflow.sharedViewState.<key>`
holding the view's state as JSON, opened by `?viewStateShareKey=<key>` (what the UI's Share button writes).
"""

from __future__ import annotations

import json

from raycredit.tracking.client import get_client, retry
from raycredit.tracking.store import normalize_uri, redact

VIEW_KEY = "raycredit"
VIEW_TAG = f"mlflow.sharedViewState.{VIEW_KEY}"
KIND_TAG, KIND = "mlflow.experimentKind", "custom_model_development"  # read where the UI has no switch
METRICS = ("test_acc", "deep_cos")
UI_PORT = 5000  # `mlflow ui`'s default


def column(kind: str, key: str) -> str:
    return f"{kind}.`{key}`"  # the UI's canonical column key


def searched_knobs(configs) -> list[str]:
    """The config keys whose values differ between `configs` (rule and seed aside), in config order."""
    flats = [c.flat() for c in configs]
    return [k for k in flats[0] if k not in ("rule", "seed") and len({repr(f.get(k)) for f in flats}) > 1]


def set_view(uri: str, experiment_id: str, knobs: list[str]) -> None:
    """Tag the experiment so that the UI opens on its runs grouped by rule (one colour and the mean per rule),
    with the rule, `knobs`, the seed, test_acc and deep_cos as columns, best test_acc first."""
    state = {"selectedColumns": [column("params", k) for k in ("rule", *knobs, "seed")]
             + [column("metrics", m) for m in METRICS],
             "groupBy": {"aggregateFunction": "average",
                         "groupByKeys": [{"mode": "param", "groupByData": "rule"}]},
             "orderByKey": column("metrics", "test_acc"), "orderByAsc": False}
    client = get_client(uri)
    for key, value in ((VIEW_TAG, json.dumps(state)), (KIND_TAG, KIND)):
        retry(lambda k=key, v=value: client.set_experiment_tag(experiment_id, k, v))


def page(experiment_id: str, run_id: str | None = None) -> str:
    """The UI's page of an experiment (in the view `set_view` stored) or of one of its runs."""
    if run_id is not None:
        return f"#/experiments/{experiment_id}/runs/{run_id}?workflowType=machine_learning"
    return f"#/experiments/{experiment_id}/runs?viewStateShareKey={VIEW_KEY}&workflowType=machine_learning"


def ui_link(uri: str, experiment_id: str, run_id: str | None = None) -> str:
    """Where to see an experiment (or a run): its URL on a tracking server, or the command that serves a local
    store on this machine and the URL it then answers at."""
    uri = normalize_uri(uri)
    if uri.startswith(("http://", "https://")):
        return f"{redact(uri).rstrip('/')}/{page(experiment_id, run_id)}"
    return (f"`mlflow ui --backend-store-uri {uri} --host 127.0.0.1`, then "
            f"http://127.0.0.1:{UI_PORT}/{page(experiment_id, run_id)}")
