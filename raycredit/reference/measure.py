"""A reference cell measured here: the runs its selector picks from a stage's finished trials (one row per run,
`raycredit.tracking.results`), one value per seed."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from raycredit.config import RULE_KNOBS
from raycredit.errors import UserError
from raycredit.reference import SELECTOR_KEYS, Table

RANKED = ("max", "min", "mid")  # "mid": the middle one of the distinct values (the lower of two)


@dataclass(frozen=True)
class Measured:
    """One cell: value and run id per seed (empty: no run matched)."""

    values: dict[int, float]
    runs: dict[int, tuple[str, ...]]

    def summary(self) -> tuple[float, float, int]:
        """mean, sample std (ddof=1; NaN for one seed), n."""
        x = np.array(list(self.values.values()), dtype=float)
        if not len(x):
            return float("nan"), float("nan"), 0
        return float(x.mean()), float(x.std(ddof=1)) if len(x) > 1 else float("nan"), len(x)


def matches(column: pd.Series, want) -> pd.Series:
    if isinstance(want, bool):
        return column.map(lambda v: v is want or str(v) == str(want))
    if isinstance(want, (int, float)):
        return pd.Series(np.isclose(pd.to_numeric(column, errors="coerce"), float(want)), index=column.index)
    return column.astype(str) == want


def select(runs: pd.DataFrame, spec: dict) -> pd.DataFrame:
    """The runs a selector picks: exact knobs first, then "max"/"min"/">x"/"<x" among those. A rule knob that
    does not apply to a run's rule (blank in `results`: frozen has no credit_norm) does not set the run apart."""
    ranked = []
    for knob, want in spec.items():
        if knob in SELECTOR_KEYS or knob == "readout":
            continue
        if knob not in runs.columns:
            return runs.iloc[0:0]
        if isinstance(want, str) and (want in RANKED or want[:1] in "<>"):
            ranked.append((knob, want))
        else:
            runs = runs[matches(runs[knob], want) | (runs[knob].isna() if knob in RULE_KNOBS else False)]
    for knob, want in ranked:
        col = pd.to_numeric(runs[knob], errors="coerce")
        if want in RANKED:
            values = sorted(col.dropna().unique())
            pick = {"max": values[-1:], "min": values[:1], "mid": values[(len(values) - 1) // 2:][:1]}[want]
            runs = runs[col.isin(pick)]
        else:
            runs = runs[col > float(want[1:])] if want[0] == ">" else runs[col < float(want[1:])]
    return runs


def per_seed(runs: pd.DataFrame, spec: dict, where: str) -> Measured:
    """The selected runs' last value of spec's metric, one per seed; with readout "best", the better of the
    metric and its fitted readout's ("fit_" + metric: the frozen features' convex optimum, `rules/frozen.py`).
    A seed matched by two runs is an error of the selector (the cell would mix configurations)."""
    picked = select(runs, spec)
    metric = spec["metric"]
    if picked.empty or metric not in picked.columns:
        return Measured({}, {})
    values = picked[metric].astype(float)
    if spec.get("readout") == "best" and f"fit_{metric}" in picked.columns:
        values = np.fmax(values, picked[f"fit_{metric}"].astype(float))
    seeds = picked["seed"].astype(int)
    if seeds.duplicated().any():
        twice = sorted(set(seeds[seeds.duplicated()]))
        raise UserError(f"{where}: {len(picked)} runs match {spec} (seeds {twice} more than once); "
                        "the selector must pick one configuration")
    keep = values.notna()
    return Measured(dict(zip(seeds[keep], values[keep], strict=True)),
                    {int(s): (r,) for s, r in zip(seeds[keep], picked["run_id"][keep], strict=True)})


def measure(table: Table, runs: pd.DataFrame, row: str, column: str) -> Measured:
    """A cell of `table` measured on a stage's runs (a `minus` cell: the per-seed difference, paired by seed)."""
    spec = table.spec(row, column)
    where = f"table {table.id}, cell {row} / {column}"
    cell = per_seed(runs, spec, where)
    if "minus" not in spec:
        return cell
    base = per_seed(runs, table.baseline(spec, column), where + " (its baseline)")
    common = sorted(set(cell.values) & set(base.values))
    return Measured({s: cell.values[s] - base.values[s] for s in common},
                    {s: cell.runs[s] + base.runs[s] for s in common})
