"""Checkpoints: plain dicts of tensors and numbers, written atomically, read without unpickling objects.

A run's checkpoint holds the model, the rule's feedback matrices / auxiliary nets, the optimizer, the
batch-order generator and the history (`checkpoint_dict`): resuming from it reproduces an uninterrupted
run exactly. A population member's checkpoint has exactly the same form.
"""

from __future__ import annotations

import io
import os
import pickle
from pathlib import Path

import torch

from raycredit import disk
from raycredit.config import Config
from raycredit.errors import UserError
from raycredit.storage import Place

CHECKPOINT_FORMAT = 1
CHECKPOINT_FILE = "checkpoint.pt"
# config keys that may differ between a checkpoint and the run resuming from it
RESUMABLE_CHANGES = {"epochs", "device", "checkpoint_every"}


def run_checkpoint_path(folder: str | os.PathLike, epoch: int | None = None) -> Path:
    """Where a run's folder holds its checkpoint: the last at <folder>/checkpoint.pt, a kept epoch at
    <folder>/epoch-<e>/checkpoint.pt. The one layout of a `raycredit train --out` folder, of a trial's member
    folder and of a run's `checkpoint` artifact in MLflow."""
    folder = Path(folder)
    return folder / CHECKPOINT_FILE if epoch is None else folder / f"epoch-{epoch}" / CHECKPOINT_FILE


def load_checkpoint(path, data: bytes | None = None) -> dict:
    """The checkpoint in the file `path`, or in `data` (its bytes, read from wherever `path` names)."""
    try:
        ckpt = torch.load(path if data is None else io.BytesIO(data), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's advice here is weights_only=False, which would run whatever the file holds
        raise UserError(f"cannot read checkpoint {path}: not a torch file of tensors and plain data "
                        "(corrupt, or holding objects raycredit refuses to unpickle)") from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else ""
        raise UserError(f"cannot read checkpoint {path}: {type(e).__name__}: {reason}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise UserError(f"{path} is not a raycredit checkpoint (format {CHECKPOINT_FORMAT})")
    return ckpt


def save_checkpoint(ckpt: dict, where: str | os.PathLike | Place) -> None:
    """Write atomically to a path, or to a `storage.Place` in a folder or object storage. In a folder
    (`disk.replace_file`) a crash or a full disk mid-write leaves the previous checkpoint intact, a symlink planted
    in shared storage is never written through, and a full disk raises disk.DiskFull naming the path and the free
    space; in object storage the object is replaced whole (`Place.write_bytes`)."""
    place = where if isinstance(where, Place) else Place.of(where)
    if place.local is not None:
        # through a Python file: torch's own file writer reports a full disk as "unexpected pos 64 vs 0"
        disk.replace_file(place.local, lambda f: torch.save(ckpt, f))
        return
    buf = io.BytesIO()
    torch.save(ckpt, buf)
    place.write_bytes(buf.getvalue())


def checkpoint_dict(cfg: Config, epoch: int, model, rule, optimizer_state: dict, generator: torch.Generator,
                    history: list, h_norm_init: float, elapsed_s: float) -> dict:
    """The checkpoint of one run (module docstring); a population member's has exactly this form. A snapshot:
    it keeps the state of `epoch` however the run goes on (state_dict() alone would follow the live weights)."""
    return copy_state({
        "format": CHECKPOINT_FORMAT,
        "config": cfg.to_dict(),
        "epoch": epoch,
        "model": model.state_dict(),
        "rule": rule.state_dict(),
        "optimizer": optimizer_state,
        "generator": generator.get_state(),
        "history": history,
        "h_norm_init": h_norm_init,
        "elapsed_s": elapsed_s,
    })


def copy_state(obj):
    """A copy of `obj`'s tensors, dicts, lists and tuples (other values are shared: they are immutable)."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: copy_state(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(copy_state(v) for v in obj)
    return obj


def check_resumable(cfg: Config, ckpt: dict) -> None:
    old = Config.from_dict(ckpt["config"]).flat()
    new = cfg.flat()
    diff = sorted(k for k in new if new[k] != old[k] and k not in RESUMABLE_CHANGES)
    if diff:
        raise UserError(f"checkpoint was written by a different config (differs in {', '.join(diff)})")
    if ckpt["epoch"] > cfg.train.epochs:
        raise UserError(f"checkpoint is at epoch {ckpt['epoch']}, beyond epochs={cfg.train.epochs}")


def checkpoint_due(cfg: Config, epoch: int) -> bool:
    """Whether a run saves its checkpoint after `epoch`: every `checkpoint_every` epochs and at the last."""
    return epoch % cfg.train.checkpoint_every == 0 or epoch == cfg.train.epochs
