"""Small helpers shared by the analysis scripts."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd

from raycredit.errors import UserError
from raycredit.tracking.results import (  # noqa: F401  (the analyses' own names)
    applied_params,
    finished_trials,
    numeric_or_text,
)
from raycredit.tracking.runs import SEARCHED_TAG


def finished_runs(runs: pd.DataFrame, metrics: tuple[str, ...]) -> pd.DataFrame:
    """One row per FINISHED run: its params (typed; NaN where a knob does not apply to its rule) and its last
    value of each metric (NaN when absent)."""
    if runs.empty:
        return pd.DataFrame()
    done = finished_trials(runs)
    out = pd.DataFrame({c.removeprefix("params."): done[c] for c in done.columns if c.startswith("params.")})
    out = applied_params(out).apply(numeric_or_text)
    drawn = done.get(f"tags.{SEARCHED_TAG}")
    if drawn is not None:  # an Optuna trial's knobs it did not draw are blank, not its config's default
        drawn = [set(d.split(",")) if isinstance(d, str) else None for d in drawn]
        searched = set().union(*(d for d in drawn if d is not None)) & set(out.columns)
        for i, d in enumerate(drawn):
            if d is not None:
                out.iloc[i, [out.columns.get_loc(c) for c in sorted(searched - d)]] = float("nan")
    for m in metrics:
        out[m] = done.get(f"metrics.{m}", pd.Series(float("nan"), index=done.index)).astype(float)
    out["n_classes"] = pd.to_numeric(done.get("tags.n_classes", pd.Series(float("nan"), index=done.index)))
    return out.reset_index(drop=True)


def markdown_table(df: pd.DataFrame, floatfmt: str = ".4f") -> str:
    def cell(v) -> str:
        if v is None or v is pd.NA or isinstance(v, float) and v != v:
            return "–"  # no value: e.g. a knob that does not apply to the row's rule
        return format(v, floatfmt) if isinstance(v, float) else str(v)

    head = "| " + " | ".join(map(str, df.columns)) + " |"
    rule = "|" + "|".join("---" for _ in df.columns) + "|"
    body = ["| " + " | ".join(cell(v) for v in row) + " |" for row in df.itertuples(index=False)]
    return "\n".join([head, rule, *body])


def write_report(lines: list[str], table: pd.DataFrame, out_dir: str | Path, name: str) -> str:
    """Write <name>.csv (the table) and <name>.md (the lines), print the text; return it."""
    text = "\n".join(lines) + "\n"
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False)
    (out / f"{name}.md").write_text(text)
    print(text + f"\nwrote {out / f'{name}.csv'} and {out / f'{name}.md'}")
    return text


def cli_main(name: str, doc: str, run: Callable[..., object], argv: list[str] | None,
             options: dict[str, dict] | None = None) -> int:
    """The command line every analysis shares: --experiment, --tracking-uri, --out; UserError exits 2.

    `options`: the analysis's own flags (argparse keyword arguments by flag), passed to run by keyword.
    """
    p = argparse.ArgumentParser(prog=f"{name}.py", description=doc,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--experiment", required=True, help="MLflow experiment of the search")
    p.add_argument("--tracking-uri", help="MLflow tracking URI (default sqlite:///$PWD/mlflow_runs/mlflow.db)")
    p.add_argument("--out", help="output folder (default reports/<experiment>)")
    dests = [p.add_argument(flag, **kw).dest for flag, kw in (options or {}).items()]
    args = p.parse_args(argv)
    try:
        run(args.tracking_uri, args.experiment, args.out or str(Path("reports") / args.experiment),
            **{d: getattr(args, d) for d in dests})
    except UserError as e:
        print(f"{name}: error: {e}", file=sys.stderr)
        return 2
    return 0
