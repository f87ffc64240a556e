"""Branches: a run that starts from another run's checkpoint at a chosen epoch (SPEC §6, "Lineage").

A branch is a config with `parent_run` and `parent_epoch` set. It starts from exactly the parent's state
at that epoch and trains on to its own `epochs` (which count from the trunk's start, so a branch that
changes nothing is the uninterrupted run, bit for bit). A branch start is a resume: `branch_start` turns
the parent's checkpoint into a checkpoint of the branch's config at the parent's epoch, and the one
training loop (`train.fit`) continues from it.

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

import os
import re
from pathlib import Path

import torch

from raycredit.checkpoint import CHECKPOINT_FORMAT, load_checkpoint, snapshot
from raycredit.config import Config
from raycredit.errors import ConfigError, UserError
from raycredit.knobs import number_list

FIXED_SECTIONS = ("model", "data")
FIXED_KEYS = ("seed",)
KEPT_DIR = "keep"  # beside a run's checkpoint: its kept epochs, epoch-<e>.pt
RUN_ID = re.compile(r"[0-9a-f]{32}")
RUN_KEY = re.compile(r"[0-9a-f]{16}")


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


def local_parent(ref: str, epoch: int) -> dict:
    """The checkpoint at `epoch` of a parent on disk: a checkpoint file, or a `raycredit train --out` folder
    (its checkpoint.pt, or keep/epoch-<epoch>.pt)."""
    path = Path(ref).expanduser()
    if path.is_dir():
        kept = path / KEPT_DIR / f"epoch-{epoch}.pt"
        path = kept if kept.exists() else path / "checkpoint.pt"
    if not path.exists():
        raise UserError(f"parent_run {ref!r}: no checkpoint at {path}")
    return at_epoch(load_checkpoint(path), epoch, str(path))


def at_epoch(ckpt: dict, epoch: int, where: str) -> dict:
    if ckpt["epoch"] != epoch:
        raise UserError(f"parent_run: {where} holds epoch {ckpt['epoch']}, not parent_epoch={epoch} (a parent "
                        "keeps the epochs of its keep_epochs and its last)")
    return ckpt


def fetch_parent(cfg: Config, dst: str | os.PathLike, uri: str | None = None,
                 experiment_id: str | None = None) -> tuple[str, dict]:
    """(the parent's MLflow run id, or '' for a parent on disk; its checkpoint at cfg's parent_epoch). A run key
    is looked up in `experiment_id`; MLflow parents are downloaded into dst."""
    from raycredit import tracking

    ref, epoch = cfg.lineage.parent_run, cfg.lineage.parent_epoch
    kind = kind_of_parent(ref)
    if kind == "path":
        return "", local_parent(ref, epoch)
    if kind == "run_key" and experiment_id is None:
        raise UserError(f"parent_run {ref!r} is a run key, which names a run within a search's experiment; "
                        "pass the parent's MLflow run id")
    run_id, path = tracking.kept_checkpoint(uri, ref, epoch, dst, experiment_id if kind == "run_key" else None)
    try:
        ckpt = load_checkpoint(path)
    except UserError as e:  # named by the parent, not by the download's temporary path
        raise UserError(str(e).replace(str(path), f"the epoch-{epoch} checkpoint of parent run {run_id}")) from None
    return run_id, at_epoch(ckpt, epoch, f"run {run_id}")


def _names(cfg: Config, in_shape, n_classes: int) -> tuple[torch.nn.Module, object, list[list[str]]]:
    """(model, rule, the names of each optimizer group's parameters) of cfg, built as a run builds them."""
    from raycredit.models import build_model
    from raycredit.rules import build_rule

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
    from raycredit.train import make_optimizer

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
    return snapshot({
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
