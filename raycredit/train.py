"""`train(cfg)`: one run, no Ray. Data stays on the device; the host syncs once per epoch.

A checkpoint is a plain dict of tensors and numbers (loadable with
`torch.load(weights_only=True)`) holding the model, the rule's feedback
matrices / auxiliary nets, the optimizer, the batch-order generator and the
history: resuming from it reproduces an uninterrupted run exactly.
"""

from __future__ import annotations

import math
import os
import pickle
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F

from raycredit import disk
from raycredit.config import Config
from raycredit.data import Data, load_data
from raycredit.diagnostics import diagnose, to_floats
from raycredit.errors import UserError
from raycredit.models import build_model
from raycredit.rules import build_rule
from raycredit.rules.base import per_sample

CHECKPOINT_FORMAT = 1
DIVERGENCE_NORM = 1e30
# config keys that may differ between a checkpoint and the run resuming from it
RESUMABLE_CHANGES = {"epochs", "device", "checkpoint_every"}

EpochCallback = Callable[[int, dict, "Callable[[], dict] | None"], None]


def parse_device(name: str) -> torch.device:
    """torch.device(name), or UserError: whether the device exists here is the caller's to check."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise UserError(f"device: {name!r} is not a device (use auto, cpu or cuda[:i])") from None


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = parse_device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device: {name!r} requested but CUDA is not available")
    return dev


def make_optimizer(cfg: Config, params: list, aux: list, device: torch.device) -> torch.optim.Optimizer:
    """One optimizer: the model's parameters at lr, the rule's auxiliary nets at aux_lr."""
    t = cfg.train
    groups = [{"params": params}] + ([{"params": aux, "lr": cfg.rule.aux_lr}] if aux else [])
    fused = {"fused": True} if device.type == "cuda" else {}
    if t.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    cls = torch.optim.AdamW if t.optimizer == "adamw" else torch.optim.Adam
    return cls(groups, lr=t.lr, weight_decay=t.weight_decay, **fused)


@torch.no_grad()
def evaluate(model, x: torch.Tensor, y: torch.Tensor, chunk: int = 8192) -> dict[str, torch.Tensor]:
    loss = torch.zeros((), device=x.device)
    correct = torch.zeros((), device=x.device, dtype=torch.int64)
    for s in range(0, len(y), chunk):
        logits = model(x[s:s + chunk])
        loss += F.cross_entropy(logits, y[s:s + chunk], reduction="sum")
        correct += (logits.argmax(1) == y[s:s + chunk]).sum()
    return {"test_loss": loss / len(y), "test_acc": correct / len(y)}


@torch.no_grad()
def last_hidden_norm(model, x: torch.Tensor) -> torch.Tensor:
    """Largest ||h_L|| over the probe (a divergence signal that needs no diagnostics)."""
    return per_sample(model.hiddens(x)[0][-1]).norm(dim=-1).max()


def load_checkpoint(path: str | os.PathLike) -> dict:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
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


def save_checkpoint(ckpt: dict, path: str | os.PathLike) -> None:
    """Write atomically: a crash or a full disk mid-write leaves the previous checkpoint intact. A full disk
    raises disk.DiskFull naming the path and the free space."""
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    try:
        # through a Python file: torch's own file writer reports a full disk as "unexpected pos 64 vs 0"
        with open(tmp, "wb") as f:
            torch.save(ckpt, f)
            f.flush()
            os.fsync(f.fileno())  # a network filesystem may report a full disk only here
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:
        tmp.unlink(missing_ok=True)
        if disk.is_full(e):
            raise disk.full_error(path, e) from None
        raise


def diag_seed(cfg: Config, epoch: int) -> int:
    """Seed of the diagnostics' random directions at `epoch`: a checkpoint recomputes them exactly."""
    return cfg.train.seed * 7919 + epoch


def restore(ckpt: dict, data: Data | None = None):
    """(cfg, model, rule, data) as they were when `ckpt` was saved, on the CPU; loads the data unless given.

    A checkpoint is data from wherever it came from: its config may name any folder with download on, so the
    data is read only, never downloaded (nothing is created where the checkpoint points).
    """
    cfg = Config.from_dict(ckpt["config"]).replace(device="cpu", download=False)
    data = load_data(cfg.data) if data is None else data
    model = build_model(cfg.model, data.in_shape, data.n_classes, cfg.data.alpha)
    rule = build_rule(cfg, model, data.n_classes)
    model.load_state_dict(ckpt["model"])
    rule.load_state_dict(ckpt["rule"])
    rule.start_epoch(ckpt["epoch"], cfg.train.epochs)
    return cfg, model, rule, data


def checkpoint_dict(cfg: Config, epoch: int, model, rule, optimizer_state: dict, generator: torch.Generator,
                    history: list, h_norm_init: float, elapsed_s: float) -> dict:
    """The checkpoint of one run (module docstring); a population member's has exactly this form. A snapshot:
    it keeps the state of `epoch` however the run goes on (state_dict() alone would follow the live weights)."""
    return snapshot({
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


def snapshot(obj):
    """A copy of `obj`'s tensors, dicts, lists and tuples (other values are shared: they are immutable)."""
    if torch.is_tensor(obj):
        return obj.detach().clone()
    if isinstance(obj, dict):
        return {k: snapshot(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(snapshot(v) for v in obj)
    return obj


@torch.no_grad()
def initial_h_norm(model, px: torch.Tensor) -> float:
    """Mean ||h_L|| over the probe at init: the reference of mode1a."""
    return per_sample(model.hiddens(px)[0][-1]).norm(dim=-1).mean().item()


def epoch_metrics(cfg: Config, epoch: int, dev_metrics: dict[str, torch.Tensor], model, rule, px: torch.Tensor,
                  py: torch.Tensor, h_norm_init: float, t0: float) -> dict[str, float]:
    """An epoch's record from its on-device metrics: one host sync, the divergence check, diagnostics when due."""
    metrics = to_floats({**dev_metrics, "_h_max": last_hidden_norm(model, px)})
    h_max = metrics.pop("_h_max")
    diverged = not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])
                    and math.isfinite(h_max) and h_max < DIVERGENCE_NORM)
    if not diverged and (epoch % cfg.diag.diag_every == 0 or epoch == cfg.train.epochs):
        metrics.update(diagnose(model, rule, px, py, cfg.diag, seed=diag_seed(cfg, epoch), h_norm_init=h_norm_init))
    metrics.update(epoch=epoch, diverged=float(diverged), time_s=time.perf_counter() - t0)
    return metrics


def check_resumable(cfg: Config, ckpt: dict) -> None:
    old = Config.from_dict(ckpt["config"]).flat()
    new = cfg.flat()
    diff = sorted(k for k in new if new[k] != old[k] and k not in RESUMABLE_CHANGES)
    if diff:
        raise UserError(f"checkpoint was written by a different config (differs in {', '.join(diff)})")
    if ckpt["epoch"] > cfg.train.epochs:
        raise UserError(f"checkpoint is at epoch {ckpt['epoch']}, beyond epochs={cfg.train.epochs}")


def train(cfg: Config, *, checkpoint: dict | None = None, on_epoch: EpochCallback | None = None,
          progress: bool = False, data: Data | None = None) -> dict:
    """Train one configuration; returns {"config", "final", "history"} (SPEC §10).

    on_epoch(epoch, metrics, checkpoint_fn) is called after every epoch;
    checkpoint_fn() builds the checkpoint dict, and is None for a diverged epoch
    (whose state must not replace the last finite checkpoint).
    """
    device = resolve_device(cfg.train.device)
    data = load_data(cfg.data, device) if data is None else data.to(device)
    torch.manual_seed(cfg.train.seed)
    model = build_model(cfg.model, data.in_shape, data.n_classes, cfg.data.alpha).to(device)
    rule = build_rule(cfg, model, data.n_classes).to(device)
    params = rule.trainable_params(model)
    opt = make_optimizer(cfg, params, list(rule.parameters()), device)
    gen = torch.Generator(device=device).manual_seed(cfg.train.seed)
    rule.generator = gen
    px, py = data.x_test[: cfg.diag.probe_size], data.y_test[: cfg.diag.probe_size]

    if checkpoint is not None:
        check_resumable(cfg, checkpoint)
        model.load_state_dict(checkpoint["model"])
        rule.load_state_dict(checkpoint["rule"])
        opt.load_state_dict(checkpoint["optimizer"])
        gen.set_state(checkpoint["generator"])
        start, history = checkpoint["epoch"], list(checkpoint["history"])
        h_norm_init, elapsed = checkpoint["h_norm_init"], checkpoint["elapsed_s"]
    else:
        start, history, elapsed = 0, [], 0.0
        h_norm_init = initial_h_norm(model, px)
    t0 = time.perf_counter() - elapsed

    def make_checkpoint(epoch: int) -> dict:
        return checkpoint_dict(cfg, epoch, model, rule, opt.state_dict(), gen, history, h_norm_init,
                               time.perf_counter() - t0)

    n, bs, E = len(data.y_train), cfg.train.batch_size, cfg.train.epochs
    step_loss = torch.compile(rule.loss) if cfg.train.compile else rule.loss
    low_precision = cfg.train.precision == "bf16"
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=E, initial=start, desc=f"{cfg.rule.rule} seed={cfg.train.seed}", unit="epoch")
    for epoch in range(start + 1, E + 1):
        model.train()
        rule.start_epoch(epoch, E)
        perm = torch.randperm(n, generator=gen, device=device)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        for s in range(0, n, bs):
            idx = perm[s:s + bs]
            x, y = data.x_train[idx], data.y_train[idx]
            if cfg.data.random_targets:
                y = torch.randint(0, data.n_classes, y.shape, generator=gen, device=device)
            opt.zero_grad(set_to_none=True)
            with torch.autocast(device.type, dtype=torch.bfloat16, enabled=low_precision):
                objective, ce, logits = step_loss(model, x, y)
            objective.backward()
            if cfg.train.clip_norm:
                torch.nn.utils.clip_grad_norm_(params, cfg.train.clip_norm)
            opt.step()
            loss_sum += ce * len(idx)
            correct += (logits.argmax(1) == y).sum()
        model.eval()
        metrics = epoch_metrics(cfg, epoch, {"train_loss": loss_sum / n, "train_acc": correct / n,
                                             **evaluate(model, data.x_test, data.y_test)},
                                model, rule, px, py, h_norm_init, t0)
        diverged = bool(metrics["diverged"])
        history.append(metrics)
        if bar is not None:
            bar.set_postfix(test_acc=f"{metrics['test_acc']:.3f}", loss=f"{metrics['train_loss']:.3f}")
            bar.update(1)
        if on_epoch is not None:
            on_epoch(epoch, metrics, None if diverged else (lambda e=epoch: make_checkpoint(e)))
        if diverged:
            break
    if bar is not None:
        bar.close()
    return {"config": cfg.to_dict(), "final": history[-1] if history else {}, "history": history,
            "n_classes": data.n_classes}
