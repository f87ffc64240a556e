"""An experiment's finished trials as a pandas table: what the analyses read, and `raycredit.results` for
notebooks."""

from __future__ import annotations

from raycredit.errors import UserError
from raycredit.tracking.runs import RUN_KEY_TAG, SUMMARY_TAG
from raycredit.tracking.store import load_runs

# params that do not make a configuration: its seeds (and where they ran) are averaged together
NOT_CONFIG = ("params.seed", "params.device")


def numeric_or_text(s):
    """The column as numbers when every value parses (MLflow stores params as strings), as booleans when every
    value is True/False, else unchanged. Where some rows have no value (a knob that does not apply to their
    rule), pandas' nullable types keep integers and booleans what they are."""
    import pandas as pd

    given = s.dropna()
    if set(given) <= {"True", "False"} and len(given):
        return s.map({"True": True, "False": False}).astype("boolean" if len(given) < len(s) else bool)
    converted = pd.to_numeric(s, errors="coerce")
    if converted.notna().sum() != len(given):
        return s
    if len(given) < len(s) and given.astype(str).str.fullmatch(r"-?\d+").all():
        return converted.astype("Int64")
    return converted


def applied_params(params):
    """A table of runs' params (config keys as columns, as logged) with each row's knobs that its run does not
    read blanked (`raycredit.rules.applied`): runs logged before raycredit left them out still have them."""
    import pandas as pd

    from raycredit.rules import unused_knobs

    if "rule" not in params or params.empty:
        return params
    params = params.copy()
    exploit = params.get("exploitability", pd.Series("False", index=params.index)).astype(str) == "True"
    for (rule, ex), rows in params.groupby([params["rule"], exploit], dropna=False):
        blank = sorted(unused_knobs(str(rule), bool(ex)) & set(params.columns))
        params.loc[rows.index, blank] = None
    return params


def finished_trials(runs):
    """The FINISHED rows of load_runs' table, without the runs that summarize a search (best config, plots).
    Refuses (UserError) a configuration whose seeds' diagnostics ran in different dtypes: their means would mix
    exact and float32 numbers (`raycredit.diagnostics`)."""
    done = runs[runs["status"] == "FINISHED"]
    if f"tags.{SUMMARY_TAG}" in done.columns:
        done = done[done[f"tags.{SUMMARY_TAG}"].isna()]
    check_dtypes(done)
    return done


def check_dtypes(done) -> None:
    if "metrics.diag_float64" not in done.columns or done.empty:
        return
    config = [c for c in done.columns if c.startswith("params.") and c not in NOT_CONFIG]
    for key, group in done.groupby(config, dropna=False):
        dtypes = group["metrics.diag_float64"].dropna()
        if dtypes.nunique() > 1:
            seeds = {d: ", ".join(sorted(map(str, group.loc[dtypes.index[dtypes == d], "params.seed"])))
                     for d in sorted(dtypes.unique(), reverse=True)}
            named = dict(zip(config, key if isinstance(key, tuple) else (key,), strict=True))
            what = " ".join(f"{k.removeprefix('params.')}={named[k]}" for k in
                            ("params.rule", "params.dataset", "params.d", "params.L") if k in named)
            raise UserError(f"refusing to average {what}: its seeds' diagnostics ran in different dtypes "
                            f"(float64: seeds {seeds.get(1.0, '-')}; float32: seeds {seeds.get(0.0, '-')}); "
                            f"re-run them with diag_dtype=float64")


def finished_table(runs):
    """One row per finished trial of load_runs' table: its params (typed; config keys as column names; blank
    where a knob does not apply to its rule), its last value of every metric, its run id and run key."""
    import pandas as pd

    done = finished_trials(runs)
    if done.empty:
        return pd.DataFrame()
    params = pd.DataFrame({c.removeprefix("params."): done[c] for c in done.columns if c.startswith("params.")})
    metrics = pd.DataFrame({c.removeprefix("metrics."): done[c].astype(float) for c in done.columns
                            if c.startswith("metrics.")}, index=done.index)
    ids = pd.DataFrame({"run_id": done["run_id"], "run_key": done.get(f"tags.{RUN_KEY_TAG}")}, index=done.index)
    return pd.concat([applied_params(params).apply(numeric_or_text), metrics, ids], axis=1).reset_index(drop=True)


def results(experiment: str, tracking_uri: str | None = None):
    """The finished trials of `experiment` in the store at tracking_uri (default: ./mlflow_runs), one row each:
    params, last metrics, run id, run key. Reads only (a missing store or experiment is a UserError)."""
    return finished_table(load_runs(tracking_uri, experiment))
