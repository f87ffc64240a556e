"""The 4-diagnostic evaluation protocol of the reference study (seeds 001 §6, 004) on an experiment's runs:
(a) residual-stream growth, (b) gradient-floor collapse, (c) functional agreement of deep_cos with accuracy,
nudging and training-loss decrease, (d) depth utilization over the frozen-blocks baseline; definitions in
`raycredit.protocol`.

Two tables: the verdicts per setting and row (rule and varying rule knobs) over seeds, PASS / FIRE / MIXED,
with the depth-utilization margin in percentage points (mean ± ddof=1 std); and, per setting, the audited
rules' functional metrics and deep_cos with their ranks (1 = best) and Kendall's tau of deep_cos's order
against each functional metric's (the seeds' §4.2 table). Writes protocol.csv (the verdicts),
protocol_functional.csv and protocol.md. Reads MLflow only; never re-trains.

    python analysis/protocol.py --experiment audit-smoke [--tracking-uri URI] [--out DIR] [--threshold-pp 2]
        [--agreement 0.6]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.summary import mean_std
from analysis.tables import cli_main, markdown_table, write_report
from raycredit.protocol import (
    AGREEMENT,
    FUNCTIONAL,
    THRESHOLD_PP,
    VERDICTS,
    functional_table,
    protocol_table,
    row_columns,
)
from raycredit.tracking.results import results

DESCRIBED = {"test_acc": "test_acc", "deep_nudge": "nudge", "loss_decrease": "loss decrease", "deep_cos": "deep cos"}


def shown_keys(df: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if k in ("rule", "d", "L") or df[k].nunique(dropna=False) > 1]


def report(df: pd.DataFrame, out_dir: str | Path, title: str, threshold_pp: float = THRESHOLD_PP,
           agreement: float = AGREEMENT) -> str:
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No finished runs.")
        return write_report(lines, pd.DataFrame(), out_dir, "protocol")
    table = protocol_table(df, threshold_pp, agreement)
    keys = shown_keys(table, row_columns(table))
    shown = table[keys + ["seeds"]].copy()
    shown["margin over frozen (pp)"] = [mean_std(a, b) for a, b in zip(table["margin_pp_mean"],
                                                                         table["margin_pp_std"], strict=True)]
    for v in VERDICTS:
        shown[v] = table[v]
    lines += [f"Verdicts over seeds: PASS (no seed fires), FIRE (every seed fires), MIXED (seeds disagree), – "
              f"(not judged). (a) mode1a, (b) mode1b at the final epoch; (c) deep_cos ranks the setting's audited "
              f"rules against accuracy, nudging and training-loss decrease with median Kendall tau below "
              f"{agreement:g}; (d) margin over the frozen-blocks baseline below {threshold_pp:g} pp.", "",
              markdown_table(shown, "g"), ""]
    func = functional_table(df, agreement)
    if func.empty:
        lines.append("(c): no setting has two audited credit rules (every rule with a deep_cos except bp) to rank.")
    else:
        fkeys = shown_keys(func, row_columns(func))
        view = func[fkeys].copy()
        for m in (*FUNCTIONAL, "deep_cos"):
            view[DESCRIBED[m]] = [f"{v:.4g} ({r:.0f})" if v == v else "–" for v, r in zip(func[m], func[f"{m}_rank"],
                                                                                             strict=True)]
        for m in FUNCTIONAL:
            view[f"tau vs {DESCRIBED[m]}"] = [f"{t:+.2f}" if t == t else "–" for t in func[f"tau_{m}"]]
        view["(c)"] = func["(c)"]
        lines += ["Functional triangulation: seed means (rank among the setting's audited rules, 1 = best: higher "
                  "accuracy, more negative nudge and loss decrease, higher deep cos); tau: Kendall's tau of deep "
                  "cos's order against the metric's, mean over seeds.", "", markdown_table(view, "g")]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        func.to_csv(Path(out_dir) / "protocol_functional.csv", index=False)
    return write_report(lines, table, out_dir, "protocol")


def run(tracking_uri: str, experiment: str, out_dir: str | Path, threshold_pp: float = THRESHOLD_PP,
        agreement: float = AGREEMENT) -> str:
    return report(results(experiment, tracking_uri), out_dir, f"Evaluation protocol of {experiment}",
                  threshold_pp, agreement)


def main(argv: list[str] | None = None) -> int:
    return cli_main("protocol", __doc__, run, argv, options={
        "--threshold-pp": dict(type=float, default=THRESHOLD_PP,
                               help="(d): the margin over the frozen baseline that counts as using depth, in pp"),
        "--agreement": dict(type=float, default=AGREEMENT,
                            help="(c): the median Kendall tau below which deep_cos disagrees")})


if __name__ == "__main__":
    sys.exit(main())
