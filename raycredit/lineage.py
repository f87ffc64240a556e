"""Branches: a run that starts from another run's checkpoint at a chosen epoch.

A branch is a config with `parent_run` and `parent_epoch` set (`Parent.of` reads them as a typed value). It
starts from exactly the parent's state at that epoch and trains on to its own `epochs` (which count from the
trunk's start, so a branch that changes nothing is the uninterrupted run, bit for bit). A branch start is a
resume: `raycredit.start.branch_start` turns the parent's checkpoint into a checkpoint of the branch's config
at the parent's epoch, and the one training loop (`train.fit`) continues from it.

This module plans: which branches a search has (`Branch`, `with_branches`), in which order they run
(`lineage_levels`) and whether they may branch from their parents (`check_branch`, `check_lineage`).

What a branch takes from its parent:
- the model's weights, the batch-order generator (so the data order continues), the history (a branch's
  run holds the whole trajectory its weights followed) and the reference ||h_L|| at init;
- the rule's state wherever the branch's rule has a tensor of the same name and shape (feedback matrices,
  auxiliary nets, a rule's own generator); the rest is the branch rule's own initialization, drawn as a
  run from scratch draws it. A branch that keeps the rule keeps all of it; DFA's feedback matrices are
  the same draw in every rule that has them (same seed);
- the optimizer's state of every parameter of the same name and shape, when the optimizer is unchanged;
  the step sizes and other settings are the branch's.

What a branch may change: every knob of the rule, train (but `seed`), diag, lineage and exploit sections
(rule, auxiliary knobs, lr, epochs, penalty_lam, credit_norm, freeze_model, ...). The model, the data and
the seed are the parent's: `check_branch` refuses a branch that changes them.
"""

from __future__ import annotations

import itertools
import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from raycredit.config import Config
from raycredit.errors import ConfigError, UserError
from raycredit.knobs import number_list
from raycredit.rules import make_config

FIXED_SECTIONS = ("model", "data")
FIXED_KEYS = ("seed",)
RUN_ID = re.compile(r"[0-9a-f]{32}")
RUN_KEY = re.compile(r"[0-9a-f]{16}")
# a planned branch's parent_run until every config of the search is final (`with_branches`): tells a later
# Branch's `of` that it is a branch, never reaches a trial
PLANNED = "<planned branch>"


@dataclass(frozen=True)
class Parent:
    """A branch's parent, read once from the config's parent_run: `kind` is 'run_id' (an MLflow run), 'run_key'
    (a config of the same experiment) or 'path' (a checkpoint file or a `raycredit train --out` folder); `ref`
    is parent_run as given, `epoch` the parent's epoch the branch starts from."""

    kind: str
    ref: str
    epoch: int

    @classmethod
    def of(cls, cfg: Config) -> Parent | None:
        """cfg's parent, or None for a run that starts from scratch."""
        ref = cfg.lineage.parent_run
        return cls(kind_of_parent(ref), ref, cfg.lineage.parent_epoch) if ref else None


def kind_of_parent(ref: str) -> str:
    """'path' (a checkpoint file or a `raycredit train --out` folder), 'run_id' or 'run_key'."""
    if os.sep in ref or ref.endswith(".pt") or Path(ref).exists():
        return "path"
    if RUN_ID.fullmatch(ref):
        return "run_id"
    if RUN_KEY.fullmatch(ref):
        return "run_key"
    raise UserError(f"parent_run {ref!r}: not an MLflow run id (32 hex digits), a run key (16 hex digits), "
                    "a checkpoint file or a `raycredit train --out` folder")


def check_branch(cfg: Config, parent: Config) -> None:
    """ConfigError naming what a branch changed that it may not (the model, the data, the seed)."""
    new, old = cfg.to_dict(), parent.to_dict()
    changed = [k for s in FIXED_SECTIONS for k in new[s] if new[s][k] != old[s][k]]
    changed += [k for k in FIXED_KEYS if cfg.flat()[k] != parent.flat()[k]]
    if changed:
        raise ConfigError(f"parent_run: a branch keeps its parent's model, data and seed; this one changes "
                          f"{', '.join(changed)}")


def kept_epochs(cfg: Config) -> list[int]:
    """The epochs a run keeps a checkpoint of: keep_epochs and its last."""
    return sorted({*number_list("keep_epochs", cfg.train.keep_epochs, int, lo=1), cfg.train.epochs})


@dataclass(frozen=True)
class Branch:
    """Branches (`raycredit.lineage`) of every config generated so far whose values match `of` (key -> allowed
    values): for each parent epoch in `at` (empty: the parent's last epoch) and each point of `grid`, a config
    that is its parent with `fixed` and the grid point applied, starting from the parent's checkpoint at that
    epoch. A value of `fixed` may be a function of the branch's flat config (parent_epoch and the grid point
    already set), e.g. {"epochs": lambda c: c["parent_epoch"] + 4}; they are applied in order. The parents
    keep the epochs their branches start from (keep_epochs). Branches of branches: a later Branch whose `of`
    matches an earlier one's configs."""

    grid: dict[str, list] = field(default_factory=dict)
    of: dict[str, list] = field(default_factory=dict)
    at: tuple[int, ...] = ()
    fixed: dict = field(default_factory=dict)


def with_branches(trunks: list[dict], branches: tuple[Branch, ...]) -> list[Config]:
    """The configs of `trunks` (flat dicts) and of their `branches`, parents first, each parent keeping the
    epochs its branches start from."""
    nodes: list[tuple[dict, int | None, int]] = [(t, None, 0) for t in trunks]  # (flat, parent index, epoch)
    for b in branches:
        for p in range(len(nodes)):
            flat = nodes[p][0]
            if any(flat[k] not in allowed for k, allowed in b.of.items()):
                continue
            for t in b.at or (flat["epochs"],):
                for combo in itertools.product(*b.grid.values()):
                    # parent_run: the parent's key once every config is final (keep_epochs changes it)
                    child = {**flat, "keep_epochs": "", "parent_run": PLANNED, "parent_epoch": t,
                             **dict(zip(b.grid, combo, strict=True))}
                    for k, v in b.fixed.items():
                        child[k] = v(child) if callable(v) else v
                    nodes.append((child, p, t))
    keep: dict[int, set[int]] = {}
    for _, p, t in nodes:
        if p is not None and t != nodes[p][0]["epochs"]:
            keep.setdefault(p, set()).add(t)
    out: list[Config] = []
    for i, (flat, p, _) in enumerate(nodes):
        if i in keep:
            flat = {**flat, "keep_epochs": ",".join(map(str, sorted(keep[i] | set(_epochs(flat)))))}
        if p is not None:
            flat = {**flat, "parent_run": out[p].key()}
        out.append(make_config(flat))
    return out


def _epochs(flat: dict) -> list[int]:
    return [int(e) for e in flat["keep_epochs"].split(",") if e.strip()]


def lineage_levels(configs: list[Config]) -> list[list[Config]]:
    """The configs in stages: those whose parent is not among them first, then their branches, and so on
    (a stage's trials start once the stage before it has ended)."""
    by_key = {c.key(): c for c in configs}
    level: dict[str, int] = {}

    def depth(c: Config) -> int:
        if c.key() not in level:
            parent = by_key.get(c.lineage.parent_run)
            level[c.key()] = 0 if parent is None else depth(parent) + 1
        return level[c.key()]

    stages: list[list[Config]] = []
    for c in configs:
        d = depth(c)
        stages += [[] for _ in range(d + 1 - len(stages))]
        stages[d].append(c)
    return stages


def check_lineage(configs: list[Config]) -> None:
    """UserError for a branch whose parent in this search cannot be branched from: it changes the parent's
    model, data or seed, or the parent does not keep the epoch it starts from."""
    by_key = {c.key(): c for c in configs}
    for c in configs:
        parent = by_key.get(c.lineage.parent_run)
        if parent is None:
            continue
        check_branch(c, parent)
        if c.lineage.parent_epoch not in kept_epochs(parent):
            raise UserError(f"parent_epoch: {c.lineage.parent_epoch} is not kept by its parent in this search "
                            f"(keeps {', '.join(map(str, kept_epochs(parent)))}; add it to the parent's keep_epochs)")


