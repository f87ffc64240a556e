"""Small helpers shared by the analysis scripts."""

from __future__ import annotations

import pandas as pd


def numeric_or_text(s: pd.Series) -> pd.Series:
    """The column as numbers when every value parses (MLflow stores params as strings), else unchanged."""
    converted = pd.to_numeric(s, errors="coerce")
    return converted if converted.notna().sum() == s.notna().sum() else s


def finished_runs(runs: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per FINISHED run: its params (typed) and its last value of each metric (NaN when absent)."""
    if runs.empty:
        return pd.DataFrame()
    done = runs[runs["status"] == "FINISHED"]
    if "tags.raycredit.summary" in done.columns:  # a search's summary run, not a trial
        done = done[done["tags.raycredit.summary"].isna()]
    out = pd.DataFrame({c.removeprefix("params."): done[c] for c in done.columns if c.startswith("params.")})
    out = out.apply(numeric_or_text)
    for m in metrics:
        out[m] = done.get(f"metrics.{m}", pd.Series(float("nan"), index=done.index)).astype(float)
    out["n_classes"] = pd.to_numeric(done.get("tags.n_classes", pd.Series(float("nan"), index=done.index)))
    return out.reset_index(drop=True)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])
