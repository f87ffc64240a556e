"""The 4-diagnostic evaluation protocol of the reference study (seeds 001 §6, 004) on an experiment's runs:
(a) residual-stream growth and (b) gradient-floor collapse against the setting's BP runs, (c) functional
agreement of deep_cos with accuracy, nudging and training loss, (d) depth utilization over the fitted
frozen-blocks baseline; definitions, and where they differ from the reference study's, in `raycredit.verdicts`.

Two tables: the verdicts (a), (b), (d) per setting and row (rule and varying rule knobs) over seeds, PASS /
FIRE / MIXED / – (why), with the depth-utilization margin in percentage points (mean ± ddof=1 std); and, per
setting, the audited rules' functional metrics and deep_cos with their ranks (1 = best), the consensus rank,
Kendall's tau of deep_cos's order against each, and (c) once per setting over seeds (the reference study's §4.2 table).
Writes protocol.csv (the verdicts), protocol_functional.csv and protocol.md. Reads MLflow only; never re-trains.

    python analysis/protocol.py --experiment audit-smoke [--tracking-uri URI] [--out DIR] [--threshold-pp 2]
        [--growth 100] [--floor-ratio 1e-3]
"""

from __future__ import annotations

import sys
from pathlib import Path

import pandas as pd

from analysis.summary import mean_std
from analysis.tables import cli_main, markdown_table, write_report
from raycredit.tracking.results import results
from raycredit.verdicts import (
    FLOOR_RATIO,
    FUNCTIONAL,
    GROWTH,
    RULE_VERDICTS,
    THRESHOLD_PP,
    functional_table,
    protocol_table,
    row_columns,
    varies,
)

DESCRIBED = {"test_acc": "test_acc", "deep_nudge": "nudge", "train_loss": "train loss", "deep_cos": "deep cos",
             "consensus": "consensus"}


def shown_keys(df: pd.DataFrame, keys: list[str]) -> list[str]:
    return [k for k in keys if k in ("rule", "d", "L") or varies(df, k)]


def report(df: pd.DataFrame, out_dir: str | Path, title: str, threshold_pp: float = THRESHOLD_PP,
           growth: float = GROWTH, floor_ratio: float = FLOOR_RATIO) -> str:
    lines = [f"# {title}", ""]
    if df.empty:
        lines.append("No finished runs.")
        return write_report(lines, pd.DataFrame(), out_dir, "protocol")
    table = protocol_table(df, threshold_pp, growth, floor_ratio)
    keys = shown_keys(table, row_columns(table))
    shown = table[keys + ["seeds"]].copy()
    shown["baseline (trained / fitted frozen)"] = [
        f"{b:.3f} ({t:.3f} / {f:.3f})" if b == b else "–"
        for b, t, f in zip(table["baseline_acc"], table["frozen_acc"], table["frozen_fit_acc"], strict=True)]
    shown["margin over baseline (pp)"] = [mean_std(a, b) for a, b in zip(table["margin_pp_mean"],
                                                                          table["margin_pp_std"], strict=True)]
    for v in RULE_VERDICTS:
        shown[v] = table[v]
    lines += [f"Verdicts over seeds: PASS (no seed fires), FIRE (every seed fires), MIXED (seeds disagree), – (not "
              f"judged, and why). (a) ||h_L|| >= {growth:g} x the setting's BP; (b) mode1b and ||g_L|| <= "
              f"{floor_ratio:g} x BP's; (d) margin over the frozen-blocks baseline (the better of the trained and "
              f"the fitted readout) below {threshold_pp:g} pp, judged where BP beats that baseline by "
              f"{threshold_pp:g} pp. Definitions and how they differ from the reference study's: "
              "raycredit/verdicts.py.", "",
              markdown_table(shown, "g"), ""]
    func = functional_table(df, threshold_pp)
    if func.empty:
        lines.append("(c): no setting has two audited credit rules (every rule with a deep_cos except bp) to rank.")
    else:
        fkeys = shown_keys(func, row_columns(func))
        view = func[fkeys].copy()
        for m in (*FUNCTIONAL, "deep_cos"):
            view[DESCRIBED[m]] = [f"{v:.4g} ({r:.0f})" if v == v else "–" for v, r in zip(func[m], func[f"{m}_rank"],
                                                                                             strict=True)]
        view["consensus rank"] = [f"{v:.2f}" for v in func["consensus_rank"]]
        for m in (*FUNCTIONAL, "consensus"):
            view[f"tau vs {DESCRIBED[m]}"] = [f"{t:+.2f}" if t == t else "–" for t in func[f"tau_{m}"]]
        view["(c) of the setting"] = func["(c)"]
        lines += ["Functional triangulation (seeds §4.2): seed means (rank among the setting's audited rules, "
                  "1 = best: higher accuracy, more negative nudge, lower final train loss, higher deep cos); the "
                  "consensus rank is the mean of the three functional ranks; tau: Kendall's tau of deep cos's order "
                  "against each, mean over seeds. (c) FIREs at a seed where deep cos ranks first a rule the "
                  "consensus does not.", "", markdown_table(view, "g")]
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        func.to_csv(Path(out_dir) / "protocol_functional.csv", index=False)
    return write_report(lines, table, out_dir, "protocol")


def run(tracking_uri: str, experiment: str, out_dir: str | Path, threshold_pp: float = THRESHOLD_PP,
        growth: float = GROWTH, floor_ratio: float = FLOOR_RATIO) -> str:
    return report(results(experiment, tracking_uri), out_dir, f"Evaluation protocol of {experiment}",
                  threshold_pp, growth, floor_ratio)


def main(argv: list[str] | None = None) -> int:
    return cli_main("protocol", __doc__, run, argv, options={
        "--threshold-pp": dict(type=float, default=THRESHOLD_PP,
                               help="(d): the margin over the frozen baseline that counts as using depth, in pp "
                                    "(also the margin BP needs for the setting to be judged)"),
        "--growth": dict(type=float, default=GROWTH, help="(a): ||h_L|| over the setting's BP's that fires"),
        "--floor-ratio": dict(type=float, default=FLOOR_RATIO,
                              help="(b): ||g_L|| over the setting's BP's at or below which mode1b fires")})


if __name__ == "__main__":
    sys.exit(main())
