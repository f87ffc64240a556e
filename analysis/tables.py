"""Small helpers shared by the analysis scripts."""

from __future__ import annotations

import pandas as pd


def numeric_or_text(s: pd.Series) -> pd.Series:
    """The column as numbers when every value parses (MLflow stores params as strings), else unchanged."""
    converted = pd.to_numeric(s, errors="coerce")
    return converted if converted.notna().sum() == s.notna().sum() else s


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    def cell(v) -> str:
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])
