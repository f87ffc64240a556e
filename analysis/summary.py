"""Per-configuration summary of a search: mean ± sample std (ddof=1) over seeds of the final metrics
(test_acc, deep_cos, deep_rho, h_norm_L = ||h_L|| at the run's last layer, mode1a, diverged).

The finished runs of an experiment are grouped by every config key that varies
across them except the seed (and bookkeeping keys such as device), and always
by credit_norm, the reference study's normalization, when recorded; each group
is one row with its number of seeds. Prints a markdown table and writes
summary.csv and summary.md. Reads MLflow only; never re-trains.

    python analysis/summary.py --experiment synthetic_ladder-smoke [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.both_fail import VARIANTS
from analysis.tables import cli_main, finished_runs, markdown_table, write_report
from raycredit.config import Config
from raycredit.tracking import load_runs
from raycredit.verdicts import varies

METRICS = ("test_acc", "deep_cos", "deep_rho", "h_norm_L", "mode1a", "diverged")
NOT_GROUPED = {"seed", "device", "checkpoint_every", "diag_every", "data_dir", "download", "n_classes", "keep_epochs",
               "parent_run", "fit_test_acc", *METRICS}
DEPTH_METRICS = {"h_norm_L": "h_norm/l{L}", "g_norm_L": "g_norm/l{L}"}  # read at each run's last layer L


def group_columns(df: pd.DataFrame) -> list[str]:
    """rule, credit_norm (always, when recorded) and every other config key that varies, in the order the
    config declares them (MLflow returns params in no fixed order, and the rows are sorted by these columns)."""
    order = {k: i for i, k in enumerate(Config().flat())}
    varying = [c for c in df.columns if c not in NOT_GROUPED and (c in VARIANTS or varies(df, c))]
    return ["rule"] + sorted((c for c in varying if c != "rule"), key=lambda c: (order.get(c, len(order)), c))


def summarize(df: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration: seeds, and <metric>_mean / <metric>_std (ddof=1; NaN for one seed)."""
    df = df.assign(**{m: float("nan") for m in METRICS if m not in df})
    keys = group_columns(df)
    g = df.groupby(keys, dropna=False, sort=True)
    out = g.size().rename("seeds").to_frame()
    for m in METRICS:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    return out.reset_index()


def mean_std(mean: float, std: float) -> str:
    if pd.isna(mean):
        return "–"
    return f"{mean:.3f}" if pd.isna(std) else f"{mean:.3f} ± {std:.3f}"


def report(df: pd.DataFrame, out_dir: str | Path, title: str) -> str:
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No finished runs.")
        table = pd.DataFrame()
    else:
        table = summarize(df)
        shown = table[group_columns(df) + ["seeds"]].copy()
        for m in METRICS:
            shown[m] = [mean_std(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
        lines += ["mean ± sample std (ddof=1) over seeds of the final epoch's metrics", "", markdown_table(shown, "g")]
    return write_report(lines, table, out_dir, "summary")


def with_depth_metrics(runs: pd.DataFrame) -> pd.DataFrame:
    """Add h_norm_L = metrics.h_norm/l{L} of each run's own depth L as a metrics column."""
    runs = runs.copy()
    for name, pattern in DEPTH_METRICS.items():
        runs[f"metrics.{name}"] = [
            row.get(f"metrics.{pattern.format(L=row['params.L'])}", float("nan")) if pd.notna(row.get("params.L"))
            else float("nan") for _, row in runs.iterrows()]
    return runs


def load_finished(tracking_uri: str, experiment: str, metrics: tuple[str, ...]) -> pd.DataFrame:
    """finished_runs of the experiment, with the per-depth metrics (h_norm_L, g_norm_L) among `metrics`."""
    runs = load_runs(tracking_uri, experiment)
    if not runs.empty:
        runs = with_depth_metrics(runs)
    return finished_runs(runs, metrics)


def run(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    return report(load_finished(tracking_uri, experiment, METRICS), out_dir, f"Summary of {experiment}")


def main(argv: list[str] | None = None) -> int:
    return cli_main("summary", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
