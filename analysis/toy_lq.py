"""The toy linear-quadratic table (the reference study's "Toy LQ"): per rule, mean ± sample std (ddof=1) over seeds of
the costate cosine (deep_cos: on toy_lq's linear student with its quadratic cost, the true gradient dJ/dh_l is
the costate), rho (deep_rho) and nudging (deep_nudge) at the final epoch, in the reference study's row order (DFA, state
bridge, credit bridge, then any other rule). Writes toy_lq.csv and toy_lq.md. Reads MLflow only.

    python analysis/toy_lq.py --experiment toy_lq-smoke [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.summary import group_columns, load_finished, mean_std
from analysis.tables import cli_main, markdown_table, write_report

COLUMNS = {"deep_cos": "costate cosine", "deep_rho": "ρ", "deep_nudge": "nudging"}
ORDER = ["dfa", "state_bridge", "credit_bridge"]


def table(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (as in analysis/summary.py): seeds, <metric>_mean, <metric>_std."""
    df = df.assign(**{m: float("nan") for m in COLUMNS if m not in df})
    keys = [k for k in group_columns(df) if k not in COLUMNS]
    g = df.groupby(keys, dropna=False)
    out = g.size().rename("seeds").to_frame()
    for m in COLUMNS:
        out[f"{m}_mean"], out[f"{m}_std"] = g[m].mean(), g[m].std(ddof=1)
    out = out.reset_index()
    rank = {r: i for i, r in enumerate(ORDER)}
    return out.sort_values("rule", key=lambda s: s.map(lambda r: rank.get(r, len(ORDER)))).reset_index(drop=True)


def report(df: pd.DataFrame, out_dir: str | Path, title: str) -> str:
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No finished runs.")
        return write_report(lines, pd.DataFrame(), out_dir, "toy_lq")
    t = table(df)
    keys = [k for k in t.columns if k not in ("seeds",) and not k.endswith(("_mean", "_std"))]
    shown = t[keys + ["seeds"]].copy()
    for m, name in COLUMNS.items():
        shown[name] = [mean_std(a, b) for a, b in zip(t[f"{m}_mean"], t[f"{m}_std"], strict=True)]
    lines += ["mean ± sample std (ddof=1) over seeds at the final epoch; costate cosine = deep_cos, ρ = deep_rho, "
              "nudging = deep_nudge (raycredit/diagnostics.py)", "", markdown_table(shown, "g")]
    return write_report(lines, t, out_dir, "toy_lq")


def run(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    return report(load_finished(tracking_uri, experiment, tuple(COLUMNS)), out_dir, f"Toy LQ: {experiment}")


def main(argv: list[str] | None = None) -> int:
    return cli_main("toy_lq", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
