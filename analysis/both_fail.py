"""Settings where FA and DFA both fall below the frozen-blocks baseline.

A (setting, seed) qualifies when FA and DFA both score below the frozen
baseline of that setting, both report
positive deep_cos, and both are at least 1.5 x chance. A setting is
(dataset, d, L, epochs) plus any other data/model/training knob that varies
in the experiment; FA and DFA runs are further split by `credit_norm`, which
is always reported, so a claim is seen with and without the reference
study's credit normalization.

The frozen baseline is fitted before anything is called below it: the better
of the frozen runs' readout trained like the other rules and their fitted
readout, the convex optimum on the same frozen features
(`raycredit.rules.frozen`), each a mean over the setting's seeds. Both are
shown. FA here is whatever `fa_mode` the runs used, named in the output
(the scan replicates the reference study's `fa_mode=reference`).

Each setting's own control: it counts only where BP beats the frozen
baseline by at least `--bp-margin` (default 0.02 = 2 pp). Where exact
gradients cannot use depth either (BP overfits, the task is linear), FA and
DFA below frozen says nothing about FA and DFA: such settings, and settings
without BP runs, are listed as invalid and none of their seeds qualifies.
Reads MLflow only; never re-trains.

    python analysis/both_fail.py --experiment both_fail_scan-smoke [--tracking-uri URI] [--out DIR] [--bp-margin M]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.tables import cli_main, finished_runs, markdown_table, write_report
from raycredit.tracking import load_runs
from raycredit.verdicts import VARIANTS, setting_columns, varies

CHANCE_FACTOR = 1.5
BP_MARGIN = 0.02


def variant_columns(df: pd.DataFrame) -> list[str]:
    return [c for c in VARIANTS if c in df.columns]


def both_fail(df: pd.DataFrame, bp_margin: float = BP_MARGIN) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(per-seed rows with the verdict, per-(setting, variant) counts with the BP control)."""
    keys = setting_columns(df)
    groups = keys + variant_columns(df)
    frozen_runs = df[df["rule"] == "frozen"].assign(fit_test_acc=df.get("fit_test_acc", float("nan")))
    frozen = frozen_runs.groupby(keys, dropna=False)[["test_acc", "fit_test_acc"]].mean().rename(
        columns={"test_acc": "frozen_trained_acc", "fit_test_acc": "frozen_fit_acc"})
    frozen["frozen_acc"] = frozen.max(axis=1)  # the baseline: the better readout (NaN only when both are)
    bp = df[df["rule"] == "bp"].groupby(keys, dropna=False)["test_acc"].mean().rename("bp_acc")
    pair = df[df["rule"].isin(["fa", "dfa"])].pivot_table(
        index=groups + ["seed"], columns="rule", values=["test_acc", "deep_cos", "n_classes"], aggfunc="first")
    if pair.empty or "fa" not in pair["test_acc"] or "dfa" not in pair["test_acc"]:
        return pd.DataFrame(), pd.DataFrame()
    rows = pd.DataFrame({
        "fa_acc": pair["test_acc"]["fa"], "dfa_acc": pair["test_acc"]["dfa"],
        "fa_deep_cos": pair["deep_cos"]["fa"], "dfa_deep_cos": pair["deep_cos"]["dfa"],
        "chance": 1.0 / pair["n_classes"].max(axis=1),
    }).dropna(subset=["fa_acc", "dfa_acc"]).reset_index()
    rows = rows.merge(frozen.reset_index(), on=keys, how="left").merge(bp.reset_index(), on=keys, how="left")
    floor = CHANCE_FACTOR * rows["chance"]
    rows["valid"] = rows["bp_acc"] - rows["frozen_acc"] >= bp_margin  # False where either is missing
    rows["fa_below"] = rows["fa_acc"] < rows["frozen_acc"]
    rows["dfa_below"] = rows["dfa_acc"] < rows["frozen_acc"]
    rows["qualifies"] = (rows["valid"] & rows["fa_below"] & rows["dfa_below"] & (rows["fa_deep_cos"] > 0)
                         & (rows["dfa_deep_cos"] > 0) & (rows["fa_acc"] >= floor) & (rows["dfa_acc"] >= floor))
    counts = rows.groupby(groups, dropna=False).agg(
        seeds=("seed", "size"), qualifying=("qualifies", "sum"), fa_below=("fa_below", "sum"),
        dfa_below=("dfa_below", "sum"), frozen_acc=("frozen_acc", "first"),
        frozen_trained_acc=("frozen_trained_acc", "first"), frozen_fit_acc=("frozen_fit_acc", "first"),
        bp_acc=("bp_acc", "first"),
        valid=("valid", "first"), fa_acc=("fa_acc", "mean"), dfa_acc=("dfa_acc", "mean")).reset_index()
    return rows, counts


def acc(value: float) -> str:
    return "–" if pd.isna(value) else f"{value:.3f}"


def setting_label(row, keys: list[str], df: pd.DataFrame) -> str:
    shown = [k for k in keys if k in ("d", "L", *VARIANTS) or varies(df, k)]
    return " ".join(f"{k}={row[k]}" for k in shown)


def report(df: pd.DataFrame, out_dir: str | Path, bp_margin: float = BP_MARGIN) -> str:
    """Print the per-setting counts and qualifying rows; write both_fail.csv and both_fail.md."""
    rows, counts = both_fail(df, bp_margin)
    lines = ["# Both-fail scan: FA and DFA below the frozen-blocks baseline", ""]
    if "fa_mode" in df.columns and (df["rule"] == "fa").any():
        modes = ", ".join(sorted(map(str, df.loc[df["rule"] == "fa", "fa_mode"].dropna().unique())))
        what = "the reference study's block-level FA" if modes == "reference" else "raycredit/rules/fa.py"
        lines += [f"FA: fa_mode={modes} ({what}); frozen: the better of the trained and the fitted readout "
                  "(trained / fitted in brackets).", ""]
    if counts.empty:
        lines.append("No setting has both FA and DFA runs finished; nothing to compare.")
    else:
        keys = setting_columns(df) + variant_columns(df)
        valid, invalid = counts[counts["valid"]], counts[~counts["valid"]]
        lines.append(f"Settings where BP beats frozen by >= {bp_margin:g} (the setting's control):")
        for _, c in valid.iterrows():
            lines.append(f"- {setting_label(c, keys, df)}: {int(c['qualifying'])}/{int(c['seeds'])} seeds "
                         f"(FA below frozen {int(c['fa_below'])}/{int(c['seeds'])}, DFA below "
                         f"{int(c['dfa_below'])}/{int(c['seeds'])}; frozen {c['frozen_acc']:.3f} "
                         f"({acc(c['frozen_trained_acc'])} / {acc(c['frozen_fit_acc'])}), "
                         f"BP {c['bp_acc']:.3f}, FA {c['fa_acc']:.3f}, DFA {c['dfa_acc']:.3f})")
        if valid.empty:
            lines.append("- none")
        if len(invalid):
            lines += ["", "Invalid settings, not counted (BP does not beat frozen by the margin, or a control is "
                          "missing):"]
            for _, c in invalid.iterrows():
                base = "no frozen runs" if pd.isna(c["frozen_acc"]) else (
                    f"frozen {c['frozen_acc']:.3f} ({acc(c['frozen_trained_acc'])} / {acc(c['frozen_fit_acc'])})")
                bp = "no bp runs" if pd.isna(c["bp_acc"]) else f"BP {c['bp_acc']:.3f}"
                lines.append(f"- {setting_label(c, keys, df)}: {bp}, {base}")
        q = rows[rows["qualifies"]]
        lines += ["", f"## Qualifying rows ({len(q)})", ""]
        cols = keys + ["seed", "bp_acc", "frozen_acc", "frozen_trained_acc", "frozen_fit_acc", "fa_acc", "fa_deep_cos",
                       "dfa_acc", "dfa_deep_cos"]
        lines.append(markdown_table(q[cols]) if len(q) else "none")
    return write_report(lines, rows, out_dir, "both_fail")


def run(tracking_uri: str, experiment: str, out_dir: str | Path, bp_margin: float = BP_MARGIN) -> str:
    runs = finished_runs(load_runs(tracking_uri, experiment), ("test_acc", "deep_cos", "diverged", "fit_test_acc"))
    return report(runs, out_dir, bp_margin)


def main(argv: list[str] | None = None) -> int:
    return cli_main("both_fail", __doc__, run, argv, options={
        "--bp-margin": dict(type=float, default=BP_MARGIN, help="a setting counts only where BP beats frozen by "
                                                                 f"at least this (default {BP_MARGIN})")})


if __name__ == "__main__":
    sys.exit(main())
