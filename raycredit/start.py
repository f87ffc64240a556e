"""Where a run starts, decided in one place (`resolve_start`) for `raycredit train` and for a trial alike.

In order: the run's own checkpoint (it resumes), else its parent's kept checkpoint (a branch trains on from
it; a measurement measures it as a frozen snapshot), else scratch. Kept epochs have one layout
(`checkpoint.run_checkpoint_path`), in a `raycredit train --out` folder, a trial's folder and a run's
`checkpoint` artifact in MLflow alike, and one reader (`read_parent`). What a branch carries over from its
parent: `raycredit.lineage`.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from raycredit.checkpoint import CHECKPOINT_FORMAT, copy_state, load_checkpoint, run_checkpoint_path
from raycredit.config import Config
from raycredit.errors import UserError
from raycredit.lineage import Parent, check_branch
from raycredit.models import build_model
from raycredit.rules import build_rule
from raycredit.train import make_optimizer


@dataclass(frozen=True)
class Start:
    """Where a run starts: `kind` 'scratch', 'resume' (its own checkpoint), 'branch' (its parent's, to train on)
    or 'snapshot' (its parent's, measured, not trained); `checkpoint` the state it starts from (None from
    scratch) and `parent_id` the parent's MLflow run id ('' when there is none or it is on disk)."""

    kind: str
    checkpoint: dict | None = None
    parent_id: str = ""

    @property
    def epoch(self) -> int:
        return self.checkpoint["epoch"] if self.checkpoint is not None else 0


def resolve_start(cfg: Config, saved: dict | None, data, workdir: str | os.PathLike | None = None,
                  uri: str | None = None, experiment_id: str | None = None) -> Start:
    """Where cfg's run starts: `saved` (the run's own checkpoint, read by the caller) if any, else its parent's
    checkpoint (`fetch_parent`, downloaded into a temporary folder under `workdir`) made into a start of cfg
    (`branch_start`; `data` gives the model's shapes), else scratch."""
    if saved is not None:
        return Start("resume", saved)
    parent = Parent.of(cfg)
    if parent is None:
        return Start("scratch")
    with tempfile.TemporaryDirectory(prefix="raycredit-parent-", dir=workdir) as tmp:
        parent_id, ckpt = fetch_parent(parent, tmp, uri, experiment_id)
    kind = "snapshot" if cfg.exploit.exploitability else "branch"
    return Start(kind, branch_start(cfg, ckpt, data.in_shape, data.n_classes), parent_id)


def read_parent(where: Path, epoch: int, name: str) -> dict:
    """The checkpoint at `epoch` of a checkpoint file, or of a run's folder (`checkpoint.run_checkpoint_path`:
    the kept epoch, else the last); `name` names the parent in errors."""
    path = where
    if where.is_dir():
        kept = run_checkpoint_path(where, epoch)
        path = kept if kept.exists() else run_checkpoint_path(where)
    if not path.exists():
        raise UserError(f"parent_run {name}: no checkpoint at {path}")
    try:
        ckpt = load_checkpoint(path)
    except UserError as e:  # named by the parent, not by a download's temporary path
        raise UserError(str(e).replace(str(path), f"the epoch-{epoch} checkpoint of parent {name}")) from None
    return at_epoch(ckpt, epoch, name)


def at_epoch(ckpt: dict, epoch: int, where: str) -> dict:
    if ckpt["epoch"] != epoch:
        raise UserError(f"parent_run: {where} holds epoch {ckpt['epoch']}, not parent_epoch={epoch} (a parent "
                        "keeps the epochs of its keep_epochs and its last)")
    return ckpt


def fetch_parent(parent: Parent, dst: str | os.PathLike, uri: str | None = None,
                 experiment_id: str | None = None) -> tuple[str, dict]:
    """(the parent's MLflow run id, or '' for a parent on disk; its checkpoint at the parent's epoch). A run key
    is looked up in `experiment_id`; MLflow parents are downloaded into dst."""
    from raycredit import tracking

    if parent.kind == "path":
        return "", read_parent(Path(parent.ref).expanduser(), parent.epoch, repr(parent.ref))
    if parent.kind == "run_key" and experiment_id is None:
        raise UserError(f"parent_run {parent.ref!r} is a run key, which names a run within a search's experiment; "
                        "pass the parent's MLflow run id")
    run_id, path = tracking.kept_checkpoint(uri, parent.ref, parent.epoch, dst,
                                            experiment_id if parent.kind == "run_key" else None)
    return run_id, read_parent(path, parent.epoch, f"run {run_id}")


def _names(cfg: Config, in_shape, n_classes: int) -> tuple[torch.nn.Module, object, list[list[str]]]:
    """(model, rule, the names of each optimizer group's parameters) of cfg, built as a run builds them."""
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, in_shape, n_classes, cfg.data.alpha)
    rule = build_rule(cfg, model, n_classes)
    trainable = {id(p) for p in rule.trainable_params(model)}
    groups = [[f"model.{k}" for k, p in model.named_parameters() if id(p) in trainable]]
    aux = [f"rule.{k}" for k, _ in rule.named_parameters()]
    return model, rule, groups + ([aux] if aux else [])


def branch_start(cfg: Config, parent: dict, in_shape, n_classes: int) -> dict:
    """The checkpoint from which `cfg` (a branch) trains on: the parent's state at its epoch, carried over as
    the module docstring says. `parent` is the parent's checkpoint at cfg's parent_epoch."""
    pcfg = Config.from_dict(parent["config"])
    check_branch(cfg, pcfg)
    at_epoch(parent, cfg.lineage.parent_epoch, "its checkpoint")
    model, rule, groups = _names(cfg, in_shape, n_classes)
    _, _, parent_groups = _names(pcfg, in_shape, n_classes)
    model.load_state_dict(parent["model"])
    state = rule.state_dict()
    for k, v in parent["rule"].items():
        if k in state and (not torch.is_tensor(v) or v.shape == state[k].shape):
            state[k] = v
    params = dict(model.named_parameters(prefix="model")) | dict(rule.named_parameters(prefix="rule"))
    aux = groups[1] if len(groups) > 1 else []
    opt = make_optimizer(cfg, [params[n] for n in groups[0]], [params[n] for n in aux],
                         torch.device("cpu")).state_dict()
    if pcfg.train.optimizer == cfg.train.optimizer:
        index = {n: i for i, n in enumerate(n for g in groups for n in g)}
        old = [n for g in parent_groups for n in g]
        for j, name in enumerate(old):
            st = parent["optimizer"]["state"].get(j)
            if st is not None and name in index and all(
                    not torch.is_tensor(v) or v.dim() == 0 or v.shape == params[name].shape for v in st.values()):
                opt["state"][index[name]] = st
    return copy_state({
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "epoch": parent["epoch"],
        "model": parent["model"],
        "rule": state,
        "optimizer": opt,
        "generator": parent["generator"],
        "history": parent["history"],
        "h_norm_init": parent["h_norm_init"],
        "elapsed_s": parent["elapsed_s"],
    })


def check_outside_parents(configs: list[Config], uri: str, experiment: str) -> None:
    """UserError for a branch whose parent is not in this search and cannot be read or branched from (each
    parent's checkpoint is fetched once, before any trial starts; nothing is written)."""
    from raycredit import tracking

    inside = {c.key() for c in configs}
    checked: dict[Parent, Config] = {}
    for c in configs:
        parent = Parent.of(c)
        if parent is None or parent.ref in inside:
            continue
        if parent not in checked:
            found = tracking.existing_experiment(uri, experiment)
            if parent.kind == "run_key" and found is None:
                raise UserError(f"parent_run {parent.ref!r}: no run with that key in experiment {experiment!r}")
            with tempfile.TemporaryDirectory(prefix="raycredit-parent-") as tmp:
                checked[parent] = Config.from_dict(fetch_parent(parent, tmp, uri, found and found[0])[1]["config"])
        check_branch(c, checked[parent])
