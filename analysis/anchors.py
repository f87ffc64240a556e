"""Anchors: canonical FA, DFA and BP beside the published figures (searches/anchors.py).

Per setting (dataset, arch, d, L, ... as in `both_fail.py`) and rule variant (credit_norm, fa_mode where
they vary), mean ± sample std (ddof=1) over seeds of test accuracy and deep_cos, and the gap to BP of
the same setting in points (`vs bp`). Under the table, the published anchors with their sources, for
the reader to set beside it. Prints markdown, writes anchors.csv and anchors.md. Reads MLflow only.

    python analysis/anchors.py --experiment anchors-smoke [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.both_fail import setting_columns
from analysis.summary import group_columns, load_finished, mean_std, summarize
from analysis.tables import cli_main, markdown_table, write_report

METRICS = ("test_acc", "deep_cos", "deep_rho", "diverged", "fit_test_acc")
PUBLISHED = [
    "Lillicrap et al. 2016, Nature Communications 7:13276: FA \"performs as effectively as backpropagation on a "
    "variety of tasks\" (MNIST with one hidden layer among them).",
    "Nøkland 2016, NeurIPS (arXiv:1609.01596): with DFA \"the test performance on MNIST and CIFAR is almost as good "
    "as those obtained with back-propagation for fully connected networks\"; DFA with dropout reaches 1.45% test "
    "error on permutation-invariant MNIST.",
    "Greydanus & Kobak 2024, \"Scaling down deep learning with MNIST-1D\", ICML (arXiv:2011.14439): on the default "
    "MNIST-1D set (4000/1000), test accuracy of logistic regression about 32 %, an MLP (40-100-100-10, ReLU) about "
    "68 %, a CNN (three ReLU convolutions of 25 channels) about 94 %, a GRU about 91 %; Adam, lr 1e-2, batches of "
    "100, 6000 steps.",
]


def anchors(df: pd.DataFrame) -> pd.DataFrame:
    """summarize() rows plus bp_acc (mean BP test_acc of the row's setting) and vs_bp = test_acc_mean - bp_acc."""
    table = summarize(df)
    setting = [k for k in setting_columns(df) if k in table.columns]
    bp = df[df["rule"] == "bp"].groupby(setting, dropna=False)["test_acc"].mean().rename("bp_acc")
    table = table.merge(bp.reset_index(), on=setting, how="left") if setting else table.assign(bp_acc=bp.mean())
    table["vs_bp"] = table["test_acc_mean"] - table["bp_acc"]
    if "fit_test_acc" in df:  # the frozen rows' fitted readout (raycredit.rules.frozen)
        keys = [k for k in group_columns(df) if k in table.columns]
        g = df.groupby(keys, dropna=False)["fit_test_acc"]
        fit = pd.DataFrame({"fit_test_acc_mean": g.mean(), "fit_test_acc_std": g.std(ddof=1)}).reset_index()
        table = table.merge(fit, on=keys, how="left")
    return table


def report(df: pd.DataFrame, out_dir: str | Path, title: str) -> str:
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No finished runs.")
        return write_report(lines, pd.DataFrame(), out_dir, "anchors")
    table = anchors(df)
    keys = group_columns(df)
    first = [k for k in ("dataset", "arch", "d", "L", "activation", "rule", "fa_mode", "credit_norm") if k in keys]
    order = first + [k for k in keys if k not in first]
    table = table.sort_values(order, kind="stable").reset_index(drop=True)
    shown = table[order + ["seeds"]].copy()
    for m in ("test_acc", "deep_cos"):
        shown[m] = [mean_std(a, b) for a, b in zip(table[f"{m}_mean"], table[f"{m}_std"], strict=True)]
    shown["vs bp (points)"] = ["–" if pd.isna(v) else f"{100 * v:+.1f}" for v in table["vs_bp"]]
    if "fit_test_acc_mean" in table:
        shown["frozen: fitted readout"] = [mean_std(a, b) for a, b in zip(table["fit_test_acc_mean"],
                                                                         table["fit_test_acc_std"], strict=True)]
    lines += ["mean ± sample std (ddof=1) over seeds of the final epoch; vs bp: mean test_acc minus BP's in the same "
              "setting, in percentage points; frozen is the last-layer-only control, its readout trained like the "
              "others (test_acc) and fitted to its convex optimum on the same frozen features (raycredit/rules/"
              "frozen.py)", "", markdown_table(shown, "g"),
              "", "Published anchors:", "", *[f"- {p}" for p in PUBLISHED]]
    return write_report(lines, table, out_dir, "anchors")


def run(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    return report(load_finished(tracking_uri, experiment, METRICS), out_dir, f"Anchors: {experiment}")


def main(argv: list[str] | None = None) -> int:
    return cli_main("anchors", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
