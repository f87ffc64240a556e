"""The audit table: per rule, mean ± sample std (ddof=1) over seeds of test accuracy, deep_cos,
||h_L||, ||g_L||, the Mode 1 flags and divergence, and the margin of the mean accuracy to the frozen-blocks
baseline of the same setting.

A setting is as in `both_fail.py` (dataset, d, L, epochs and any other data, model or training knob that
varies); a row is a rule within a setting, split by credit_norm (always shown) and any other rule knob
that varies (e.g. penalty_lam).
||h_L|| and ||g_L|| are read at each run's own last layer. mode1a / mode1b / diverged are 0/1 per run,
so their means are the fraction of seeds flagged. `frozen_margin` = mean test_acc - the frozen baseline
(the better of the frozen runs' trained and fitted readouts, each a mean over the setting's seeds); it is empty
where the setting has no frozen runs. Columns (a), (b), (d) are the evaluation protocol's verdicts over seeds
(PASS / FIRE / MIXED / – (why); `raycredit.verdicts`, whose defaults they use: `analysis/protocol.py` has the
thresholds as flags, and (c), a verdict per setting rather than per rule, in its functional table). Prints
markdown, writes audit_table.csv (numbers) and audit_table.md. Reads MLflow only; never re-trains.

    python analysis/audit_table.py --experiment audit-smoke [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.summary import load_finished, mean_std
from analysis.tables import cli_main, markdown_table, write_report
from raycredit.verdicts import METRICS as PROTOCOL_METRICS
from raycredit.verdicts import RULE_VERDICTS, VARIANTS, protocol_table, row_columns, varies

METRICS = ("test_acc", "deep_cos", "h_norm_L", "g_norm_L", "mode1a", "mode1b", "diverged")
FLAGS = ("mode1a", "mode1b", "diverged")
NORMS = ("h_norm_L", "g_norm_L")


def audit(df: pd.DataFrame) -> pd.DataFrame:
    """One row per (setting, rule, varying rule knobs): seeds, <metric>_mean, <metric>_std, frozen_acc,
    frozen_margin and the protocol verdicts (a), (b), (d)."""
    df = df.assign(**{m: float("nan") for m in METRICS if m not in df})
    keys = row_columns(df)
    g = df.groupby(keys, dropna=False, sort=True)
    out = g.size().rename("seeds").to_frame()
    for m in METRICS:
        out[f"{m}_mean"] = g[m].mean()
        out[f"{m}_std"] = g[m].std(ddof=1)
    out = out.reset_index()
    verdicts = protocol_table(df)[keys + ["frozen_acc", "frozen_fit_acc", "baseline_acc", *RULE_VERDICTS]]
    out = out.merge(verdicts, on=keys, how="left")
    out["frozen_margin"] = out["test_acc_mean"] - out["baseline_acc"]
    return out


def report(df: pd.DataFrame, out_dir: str | Path, title: str) -> str:
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No finished runs.")
        return write_report(lines, pd.DataFrame(), out_dir, "audit_table")
    table = audit(df)
    shown_keys = [k for k in row_columns(df) if k in ("rule", "d", "L", *VARIANTS) or varies(df, k)]
    shown = table[shown_keys + ["seeds"]].copy()
    for m in METRICS:
        pairs = zip(table[f"{m}_mean"], table[f"{m}_std"], table["seeds"], strict=True)
        if m in FLAGS:
            shown[m] = ["–" if pd.isna(a) else f"{round(a * n)}/{n}" for a, _, n in pairs]
        elif m in NORMS:
            shown[m] = ["–" if pd.isna(a) else f"{a:.3g}" if pd.isna(b) else f"{a:.3g} ± {b:.2g}" for a, b, _ in pairs]
        else:
            shown[m] = [mean_std(a, b) for a, b, _ in pairs]
    shown["vs frozen"] = ["–" if pd.isna(v) else f"{v:+.3f}" for v in table["frozen_margin"]]
    for v in RULE_VERDICTS:
        shown[v] = table[v]
    lines += ["mean ± sample std (ddof=1) over seeds of the final epoch; mode1a, mode1b and diverged: seeds "
              "flagged; vs frozen: mean test_acc minus the frozen-blocks baseline of the same setting (the better "
              "of its trained and fitted readouts); (a), (b), (d): the evaluation protocol's verdicts over seeds "
              "(`raycredit.verdicts`; (c), one per setting, in `analysis/protocol.py`)", "",
              markdown_table(shown, "g")]
    return write_report(lines, table, out_dir, "audit_table")


def run(tracking_uri: str, experiment: str, out_dir: str | Path) -> str:
    return report(load_finished(tracking_uri, experiment, tuple(dict.fromkeys(METRICS + PROTOCOL_METRICS))), out_dir,
                  f"Audit of {experiment}")


def main(argv: list[str] | None = None) -> int:
    return cli_main("audit_table", __doc__, run, argv)


if __name__ == "__main__":
    sys.exit(main())
