"""The reproduction's verdicts: every table of the reference study (raycredit/reference/study.toml) beside
what the stages of searches/reproduce.py logged, and a tested verdict per claim.

Re-derives everything from the MLflow store alone (the experiments `<prefix>-<stage>`), never trains. Each
claim is REPRODUCED, CONTRADICTED or INCONCLUSIVE by the test raycredit/reference/decide.py states (one-sided
t-tests at alpha 0.05 over seeds, paired by seed where the claim says so). Writes reproduction_<preset>.md
(the tables, the verdicts, a manifest and the source map: the run ids behind every number) and
reproduction_<preset>.csv (one row per measured cell), and logs the report to the reproduction's parent
run (experiment `<prefix>`). Exit 0 when it could decide or leave open every claim; --strict: exit 1 on any
CONTRADICTED.

    python analysis/verify.py --preset smoke [--experiment reproduce-smoke] [--tracking-uri URI] [--out DIR]
"""

from __future__ import annotations

import argparse
import platform
import sys
from collections import Counter
from importlib import metadata
from pathlib import Path

import pandas as pd

from raycredit.errors import UserError
from raycredit.reference import Study, Table, study
from raycredit.reference.decide import ALPHA, CONTRADICTED, INCONCLUSIVE, REPRODUCED, Verdict, decide
from raycredit.reference.measure import Measured, measure

SMOKE_LABEL = "smoke scale — checks the machinery, not the science"
PACKAGES = ("raycredit", "torch", "ray", "mlflow", "optuna", "numpy", "scipy", "pandas")


def stage_runs(uri: str, prefix: str, stages: list[str]) -> dict[str, pd.DataFrame]:
    """Each stage's finished trials (an empty table for a stage not run)."""
    from raycredit import tracking
    from raycredit.tracking.results import results

    out = {}
    for stage in stages:
        found = tracking.existing_experiment(uri, f"{prefix}-{stage}")
        out[stage] = results(f"{prefix}-{stage}", uri) if found is not None else pd.DataFrame()
    return out


def fmt(x: float) -> str:
    return "–" if x != x else f"{x:.4g}"


def ours(m: Measured) -> str:
    mean, std, n = m.summary()
    return "not run" if n == 0 else f"{fmt(mean)} ± {'–' if std != std else f'{std:.2g}'} ({n})"


def setting(runs: pd.DataFrame) -> str:
    """The knobs that make our runs of a table differ from the reference study's (dataset, size, epochs, seeds)."""
    parts = []
    for knob in ("dataset", "arch", "d", "L", "epochs", "credit_norm", "fa_mode"):
        if knob in runs:
            values = sorted({str(v) for v in runs[knob].dropna()})
            if values:
                parts.append(f"{knob}={'/'.join(values)}")
    if "seed" in runs:
        parts.append(f"seeds {','.join(str(s) for s in sorted(runs['seed'].dropna().astype(int).unique()))}")
    return ", ".join(parts)


def table_section(t: Table, runs: pd.DataFrame, s: Study, cells: dict, verdicts: dict, label: str,
                  folder: Path) -> list[str]:
    lines = [f"## {t.id}: {t.title}", "", f"Reference (its note {t.seed}): {t.setting}.  "]
    ids = {r for key in t.measured() for rs in cells[(t.id, *key)].runs.values() for r in rs}
    used = runs[runs["run_id"].isin(ids)] if not runs.empty else runs
    lines.append(f"Here: stage `{t.stage}`, {setting(used) or 'no finished runs'}." + (f" Note: {t.note}." if t.note
                                                                                        else ""))
    lines += ["", "| row | column | reference | ours: mean ± std (n seeds) | Δ |", "|---|---|---|---|---|"]
    for row, column in t.measured():
        ref, m = t.value(row, column), cells[t.id, row, column]
        mean, _, n = m.summary()
        delta = fmt(mean - ref.value) if n and ref.value is not None else "–"
        lines.append(f"| {row} | {column} | {ref.text()} | {ours(m)} | {delta} |")
    plots = sorted((folder / t.stage).glob("*.png"))  # what the stage's search drew (the driver's --out/<stage>)
    if plots:
        lines += ["", f"Plots of the stage, beside this report in `{t.stage}/`: " + ", ".join(p.name for p in plots)]
    lines.append("")
    for c in s.claims_of(t.id):
        v = verdicts[c.id]
        lines.append(f"- **{v.verdict}**{label} `{c.id}`: {c.says} ({c.statement()}). {v.why}.")
    return [*lines, ""]


def manifest(uri: str, prefix: str, stages: list[str], runs: dict[str, pd.DataFrame]) -> list[str]:
    from raycredit import tracking
    from raycredit.tracking.provenance import code_version

    lines = ["## Manifest", "", f"- store: {tracking.redact(uri)}, experiments `{prefix}-<stage>`",
             f"- verified by code {code_version()} (`-dirty`: uncommitted changes) on {platform.node()} "
             f"({platform.platform()}), Python {platform.python_version()}",
             "- packages: " + ", ".join(f"{p} {version(p)}" for p in PACKAGES)]
    lines += ["", "| stage | runs | wall (first start to last end) | code that trained it | devices | data |",
              "|---|---|---|---|---|---|"]
    for stage in stages:
        found = tracking.existing_experiment(uri, f"{prefix}-{stage}")
        if found is None or runs[stage].empty:
            lines.append(f"| {stage} | 0 | – | – | – | – |")
            continue
        facts = tracking.experiment_facts(uri, found[0])
        wall = wall_s(uri, prefix, stage)
        lines.append(f"| {stage} | {len(runs[stage])} | {wall / 60:.1f} min | {', '.join(sorted(facts['code']))} | "
                     f"{', '.join(sorted(facts['device']))} | {', '.join(sorted(facts['data']))} |")
    return [*lines, ""]


def wall_s(uri: str, prefix: str, stage: str) -> float:
    from raycredit.tracking import load_runs

    raw = load_runs(uri, f"{prefix}-{stage}")
    raw = raw[raw["status"] == "FINISHED"]
    return (raw["end_time"].max() - raw["start_time"].min()).total_seconds()


def version(package: str) -> str:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return "–"


def run(tracking_uri: str | None, prefix: str, out: str, *, preset: str = "",
        stages: list[str] | None = None) -> Counter:
    """Write the report; return the count of each verdict."""
    from raycredit import tracking

    uri = tracking.existing_store(tracking_uri)
    s = study()
    stages = stages or s.stages()
    runs = stage_runs(uri, prefix, stages)
    tables = [t for t in s.tables.values() if t.stage in stages]
    cells = {(t.id, row, col): measure(t, runs[t.stage], row, col) if not runs[t.stage].empty else Measured({}, {})
             for t in tables for row, col in t.measured()}
    verdicts: dict[str, Verdict] = {}
    for c in (c for t in tables for c in s.claims_of(t.id)):
        verdicts[c.id] = decide(c, [cells[(c.table, *c.cell(i))].values for i in range(len(c.cells))])
    counts = Counter(v.verdict for v in verdicts.values())
    label = f" ({SMOKE_LABEL})" if preset == "smoke" else ""
    head = [f"# Reproduction of the reference study{f': preset {preset}' if preset else ''}", "",
            f"**{counts[REPRODUCED]} of {len(verdicts)} claims reproduced, {counts[CONTRADICTED]} contradicted, "
            f"{counts[INCONCLUSIVE]} inconclusive{f' at preset {preset}' if preset else ''}**{label}.", "",
            f"Each claim is decided by one-sided t-tests at α = {ALPHA} over seeds (Welch's, or paired by seed where "
            "the claim says so; TOST for ≈; each pair of an ordering), without correction across claims; fewer than "
            "2 seeds on a side leave a claim INCONCLUSIVE. \"reference\" is the reference study's number, \"ours\" the "
            "mean ± sample std (ddof=1) over our seeds, Δ = ours − reference.", ""]
    folder = Path(out)
    body = [line for t in tables for line in table_section(t, runs[t.stage], s, cells, verdicts, label, folder)]
    rest = [f"- {t.id} ({t.seed}) {t.title}: {t.note or 'its stage was not run'}" for t in s.tables.values()
            if t not in tables]
    sources = ["## Source map", "", "| table | cell | seed: run ids |", "|---|---|---|"]
    sources += [f"| {tid} | {row} / {col} | " + "; ".join(f"{seed}: {' − '.join(r)}" for seed, r in
                                                           sorted(m.runs.items())) + " |"
                for (tid, row, col), m in cells.items() if m.runs]
    text = "\n".join([*head, *body, "## Tables not measured here", "", *rest, "",
                      *manifest(uri, prefix, stages, runs), *sources]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"reproduction_{preset or prefix}"
    (folder / f"{name}.md").write_text(text)
    pd.DataFrame([{"table": tid, "row": row, "column": col, "reference": s.tables[tid].value(row, col).value,
                   **dict(zip(("mean", "std", "n"), m.summary(), strict=True))}
                  for (tid, row, col), m in cells.items()]).to_csv(folder / f"{name}.csv", index=False)
    experiment_id = tracking.ensure_experiment(uri, prefix)
    parent = tracking.record_summary(uri, experiment_id, key=f"reproduction-{prefix}", name=prefix,
                            params={"preset": preset},
                            metrics={k.lower(): counts[k] for k in (REPRODUCED, CONTRADICTED, INCONCLUSIVE)},
                            tags={"search": "reproduce", "stages": ",".join(stages)}, note=head[2], update=True,
                            files=(folder / f"{name}.md", folder / f"{name}.csv"))
    for stage in stages:  # each stage's experiment names the reproduction it belongs to
        found = tracking.existing_experiment(uri, f"{prefix}-{stage}")
        if found is not None:
            tracking.tag_experiment(uri, found[0], {"raycredit.reproduction": prefix,
                                                    "raycredit.reproduction_run": parent})
    print(head[2])
    print(f"wrote {folder / f'{name}.md'} and {folder / f'{name}.csv'}")
    return counts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="verify.py", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="", help="the reproduction's preset (names the report; smoke labels it)")
    p.add_argument("--experiment", help="prefix of the stages' experiments (default reproduce-<preset>)")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///$PWD/mlflow_runs/mlflow.db)")
    p.add_argument("--out", help="report folder (default reports/<prefix>)")
    p.add_argument("--strict", action="store_true", help="exit 1 when a claim is CONTRADICTED")
    args = p.parse_args(argv)
    if not args.preset and not args.experiment:
        p.error("give --preset or --experiment")
    prefix = args.experiment or f"reproduce-{args.preset}"
    try:
        counts = run(args.tracking_uri, prefix, args.out or str(Path("reports") / prefix), preset=args.preset)
    except UserError as e:
        print(f"verify: error: {e}", file=sys.stderr)
        return 2
    return 1 if args.strict and counts[CONTRADICTED] else 0


if __name__ == "__main__":
    sys.exit(main())
