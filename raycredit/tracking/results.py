"""An experiment's finished trials as a pandas table: what the analyses read, and `raycredit.results` for
notebooks."""

from __future__ import annotations

from raycredit.tracking.runs import RUN_KEY_TAG, SUMMARY_TAG
from raycredit.tracking.store import load_runs


def numeric_or_text(s):
    """The column as numbers when every value parses (MLflow stores params as strings), as booleans when every
    value is True/False, else unchanged."""
    import pandas as pd

    if set(s.dropna()) <= {"True", "False"} and s.notna().any():
        return s.map({"True": True, "False": False})
    converted = pd.to_numeric(s, errors="coerce")
    return converted if converted.notna().sum() == s.notna().sum() else s


def finished_trials(runs):
    """The FINISHED rows of load_runs' table, without the runs that summarize a search (best config, plots)."""
    done = runs[runs["status"] == "FINISHED"]
    if f"tags.{SUMMARY_TAG}" in done.columns:
        done = done[done[f"tags.{SUMMARY_TAG}"].isna()]
    return done


def finished_table(runs):
    """One row per finished trial of load_runs' table: its params (typed; config keys as column names), its
    last value of every metric, its run id and run key."""
    import pandas as pd

    done = finished_trials(runs)
    if done.empty:
        return pd.DataFrame()
    out = pd.DataFrame({c.removeprefix("params."): done[c] for c in done.columns if c.startswith("params.")})
    out = out.apply(numeric_or_text)
    for c in done.columns:
        if c.startswith("metrics."):
            out[c.removeprefix("metrics.")] = done[c].astype(float)
    out["run_id"] = done["run_id"]
    out["run_key"] = done.get(f"tags.{RUN_KEY_TAG}")
    return out.reset_index(drop=True)


def results(experiment: str, tracking_uri: str | None = None):
    """The finished trials of `experiment` in the store at tracking_uri (default: ./mlflow_runs), one row each:
    params, last metrics, run id, run key. Reads only (a missing store or experiment is a UserError)."""
    return finished_table(load_runs(tracking_uri, experiment))
