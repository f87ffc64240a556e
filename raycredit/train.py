"""`train(cfg)`: one run, no Ray. Data stays on the device; the host syncs once per epoch.

`fit` is the one training loop, for a single run and for a population alike: what differs between them
(an eager step of one model, a vmapped step of P stacked members) is its stepper (`EagerStepper` here,
`raycredit.population.PopulationStepper`). Checkpoints: `raycredit.checkpoint`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import torch

from raycredit.checkpoint import check_resumable, checkpoint_dict, copy_state
from raycredit.config import Config
from raycredit.data import Data, load_data
from raycredit.diagnostics import diagnose, to_floats
from raycredit.errors import UserError
from raycredit.models import build_model
from raycredit.rules import build_rule
from raycredit.rules.base import Rule, n_correct, per_sample, task_loss

DIVERGENCE_NORM = 1e30

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
    # float64 sums: an accuracy of 534/1000 is logged as 0.534, not float32's 0.53399997
    loss = torch.zeros((), device=x.device, dtype=torch.float64)
    correct = torch.zeros((), device=x.device, dtype=torch.float64)
    for s in range(0, len(y), chunk):
        logits = model(x[s:s + chunk])
        loss += task_loss(logits, y[s:s + chunk], reduction="sum").double()
        correct += n_correct(logits, y[s:s + chunk])
    return {"test_loss": loss / len(y), "test_acc": correct / len(y)}


@torch.no_grad()
def last_hidden_norm(model, x: torch.Tensor) -> torch.Tensor:
    """Largest ||h_L|| over the probe (a divergence signal that needs no diagnostics)."""
    return per_sample(model.hiddens(x)[0][-1]).norm(dim=-1).max()


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


@torch.no_grad()
def initial_h_norm(model, px: torch.Tensor) -> float:
    """Mean ||h_L|| over the probe at init: the reference of mode1a."""
    return per_sample(model.hiddens(px)[0][-1]).norm(dim=-1).mean().item()


def loss_decrease(cfg: Config, epoch: int, train_loss: float, history: list[dict]) -> dict[str, float]:
    """{"loss_decrease": train_loss minus the train_loss of epoch max(1, epoch - loss_window)}; {} at epoch 1."""
    then = max(1, epoch - cfg.diag.loss_window)
    earlier = [r["train_loss"] for r in history if r.get("epoch") == then]
    return {"loss_decrease": train_loss - earlier[0]} if earlier and then < epoch else {}


@dataclass
class MemberState:
    """What `fit` carries across epochs for one member: its config, diagnostics probe (x, y), ||h_L|| at init
    and its history of epoch records."""

    cfg: Config
    probe: tuple[torch.Tensor, torch.Tensor]
    h_init: float
    history: list[dict]


def epoch_metrics(member: MemberState, epoch: int, dev_metrics: dict[str, torch.Tensor], model, rule,
                  t0: float) -> dict[str, float]:
    """An epoch's record from its on-device metrics: one host sync, the divergence check, diagnostics when due."""
    cfg, (px, py) = member.cfg, member.probe
    metrics = to_floats({**dev_metrics, "_h_max": last_hidden_norm(model, px)})
    h_max = metrics.pop("_h_max")
    diverged = not (math.isfinite(metrics["train_loss"]) and math.isfinite(metrics["test_loss"])
                    and math.isfinite(h_max) and h_max < DIVERGENCE_NORM)
    metrics.update(loss_decrease(cfg, epoch, metrics["train_loss"], member.history))
    if not diverged and (epoch % cfg.diag.diag_every == 0 or epoch == cfg.train.epochs):
        metrics.update(diagnose(model, rule, px, py, cfg.diag, seed=diag_seed(cfg, epoch), h_norm_init=member.h_init))
    metrics.update(epoch=epoch, diverged=float(diverged), time_s=time.perf_counter() - t0)
    return metrics


class Stepper(Protocol):
    """What `fit` needs of a stepper to step, evaluate, checkpoint and resume its members (one model eagerly,
    `EagerStepper`; P stacked members, `raycredit.population.PopulationStepper`). Every list is indexed by
    member."""

    members: list[tuple[torch.nn.Module, Rule]]  # each member's (model, rule), holding its current weights
    datas: list[Data]  # each member's data, on `device`
    gens: list[torch.Generator]  # each member's batch-order generator, checkpointed with it
    n: int  # training examples per epoch (every member has as many)
    device: torch.device

    def load(self, checkpoints: list[dict]) -> None:
        """Take up every member's state from its checkpoint (all of one epoch)."""

    def start_epoch(self, epoch: int, epochs: int) -> torch.Tensor:
        """Schedules and train mode; returns the epoch's batch order, (members, n)."""

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batches idx (members, b); returns (summed CE, correct), each (members,)."""

    def end_epoch(self) -> dict[str, torch.Tensor]:
        """Eval mode and the test metrics, each (members,)."""

    def optimizer_state(self, i: int) -> dict:
        """Member i's optimizer state, as `torch.optim.Optimizer.state_dict` gives one model's."""


class EagerStepper:
    """One model trained eagerly: what `fit` needs to step, evaluate, checkpoint and resume it. A population's
    stepper (`raycredit.population.PopulationStepper`) offers the same for P members with stacked weights;
    every list here is indexed by member (one)."""

    def __init__(self, cfg: Config, data: Data, device: torch.device):
        torch.manual_seed(cfg.train.seed)
        self.cfg, self.data, self.device = cfg, data, device
        self.model = build_model(cfg.model, data.in_shape, data.n_classes, cfg.data.alpha).to(device)
        self.rule = build_rule(cfg, self.model, data.n_classes).to(device)
        self.params = self.rule.trainable_params(self.model)
        self.opt = make_optimizer(cfg, self.params, list(self.rule.parameters()), device)
        self.rule.generator = torch.Generator(device=device).manual_seed(cfg.train.seed)
        self.step_loss = torch.compile(self.rule.loss) if cfg.train.compile else self.rule.loss
        self.members = [(self.model, self.rule)]
        self.datas = [data]
        self.gens = [self.rule.generator]
        self.n = len(data.y_train)

    def load(self, checkpoints: list[dict]) -> None:
        [ckpt] = checkpoints
        self.model.load_state_dict(ckpt["model"])
        self.rule.load_state_dict(ckpt["rule"])
        self.opt.load_state_dict(ckpt["optimizer"])
        self.rule.generator.set_state(ckpt["generator"])

    def start_epoch(self, epoch: int, epochs: int) -> torch.Tensor:
        """Schedules, train mode; returns the epoch's batch order, (members, n)."""
        self.model.train()
        self.rule.start_epoch(epoch, epochs)
        return torch.randperm(self.n, generator=self.rule.generator, device=self.device).unsqueeze(0)

    def step(self, idx: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """One optimizer step on the batch idx (members, b); returns (summed CE, correct), each (members,)."""
        cfg, d, [i] = self.cfg, self.data, idx
        x, y = d.x_train[i], d.y_train[i]
        if cfg.data.random_targets:
            y = torch.randint(0, d.n_classes, y.shape, generator=self.rule.generator, device=self.device)
        self.opt.zero_grad(set_to_none=True)
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=cfg.train.precision == "bf16"):
            objective, ce, logits = self.step_loss(self.model, x, y)
        if objective.requires_grad:  # a frozen model whose rule has nothing to learn: no step at all
            objective.backward()
        if cfg.train.clip_norm:
            torch.nn.utils.clip_grad_norm_(self.params, cfg.train.clip_norm)
        self.opt.step()
        return (ce * len(i)).unsqueeze(0), n_correct(logits, y).unsqueeze(0)

    def end_epoch(self) -> dict[str, torch.Tensor]:
        """Eval mode and the test metrics, each (members,); the members' modules hold the current weights."""
        self.model.eval()
        return {k: v.unsqueeze(0) for k, v in evaluate(self.model, self.data.x_test, self.data.y_test).items()}

    def optimizer_state(self, i: int) -> dict:
        return self.opt.state_dict()


def fit(stepper: Stepper, cfgs: list[Config], *, checkpoints: list[dict] | None, on_epoch: Callable | None,
        bar=None) -> list[list[dict]]:
    """The training loop, for one run or a population (`stepper`, one member per config): batch order,
    steps, metrics, divergence, diagnostics cadence, checkpoints and resume. Returns each member's history.

    on_epoch(epoch, results, checkpoint_fn): results[i] is member i's metrics, None once it has diverged in an
    earlier epoch; checkpoint_fn() gives every member's checkpoint (None for members no longer training), and
    is None when no member is training.
    """
    P, cfg0 = len(cfgs), cfgs[0]
    probes = [(d.x_test[: c.diag.probe_size], d.y_test[: c.diag.probe_size])
              for c, d in zip(cfgs, stepper.datas, strict=True)]
    if checkpoints is not None:
        if len(checkpoints) != P or len({c["epoch"] for c in checkpoints}) != 1:
            raise UserError("a population resumes from one checkpoint per member, all of the same epoch")
        for cfg, ckpt in zip(cfgs, checkpoints, strict=True):
            check_resumable(cfg, ckpt)
        # copies: torch's Optimizer.load_state_dict keeps the tensors it is given, and Adam then updates them in
        # place, which would change the caller's checkpoint (a branch's start, reused by another branch)
        stepper.load([copy_state(c) for c in checkpoints])
        start, elapsed = checkpoints[0]["epoch"], checkpoints[0]["elapsed_s"]
        members = [MemberState(cfg, probe, c["h_norm_init"], list(c["history"]))
                   for cfg, probe, c in zip(cfgs, probes, checkpoints, strict=True)]
    else:
        start, elapsed = 0, 0.0
        members = [MemberState(cfg, probe, initial_h_norm(model, probe[0]), [])
                   for cfg, probe, (model, _) in zip(cfgs, probes, stepper.members, strict=True)]
    t0 = time.perf_counter() - elapsed

    def make_checkpoint(epoch: int, live: tuple[int, ...]) -> list[dict | None]:
        out: list[dict | None] = [None] * P
        for i in live:
            (model, rule), m = stepper.members[i], members[i]
            out[i] = checkpoint_dict(m.cfg, epoch, model, rule, stepper.optimizer_state(i), stepper.gens[i],
                                     m.history, m.h_init, time.perf_counter() - t0)
        return out

    n, bs, E = stepper.n, cfg0.train.batch_size, cfg0.train.epochs
    live = list(range(P))  # checkpoints hold only members that are still training
    for epoch in range(start + 1, E + 1):
        perm = stepper.start_epoch(epoch, E)
        loss_sum = torch.zeros(P, device=stepper.device, dtype=torch.float64)  # float64: as in `evaluate`
        correct = torch.zeros(P, device=stepper.device, dtype=torch.float64)
        for s in range(0, n, bs):
            ce_sum, right = stepper.step(perm[:, s:s + bs])
            loss_sum += ce_sum
            correct += right
            if bar is not None:
                bar.update(1)
        test = stepper.end_epoch()
        results: list[dict | None] = [None] * P
        for i in live:
            model, rule = stepper.members[i]
            results[i] = epoch_metrics(members[i], epoch, {"train_loss": loss_sum[i] / n, "train_acc": correct[i] / n,
                                                           **{k: v[i] for k, v in test.items()}}, model, rule, t0)
            if epoch == E and not results[i]["diverged"]:
                results[i].update(rule.final_metrics(model, stepper.datas[i]))
            members[i].history.append(results[i])
        live = [i for i in live if not results[i]["diverged"]]
        if bar is not None:
            bar.set_postfix(epoch=f"{epoch}/{E}", test_acc=f"{results[0]['test_acc']:.3f}",
                            loss=f"{results[0]['train_loss']:.3f}")
        if on_epoch is not None:
            on_epoch(epoch, results, (lambda e=epoch, lv=tuple(live): make_checkpoint(e, lv)) if live else None)
        if not live:
            break
    return [m.history for m in members]


def train(cfg: Config, *, checkpoint: dict | None = None, on_epoch: EpochCallback | None = None,
          progress: bool = False, data: Data | None = None) -> dict:
    """Train one configuration; returns {"config", "final", "history"}.

    on_epoch(epoch, metrics, checkpoint_fn) is called after every epoch;
    checkpoint_fn() builds the checkpoint dict, and is None for a diverged epoch
    (whose state must not replace the last finite checkpoint).
    """
    device = resolve_device(cfg.train.device)
    data = load_data(cfg.data, device) if data is None else data.to(device)
    stepper = EagerStepper(cfg, data, device)

    def each_epoch(epoch: int, results: list[dict | None], checkpoint_fn) -> None:
        if on_epoch is not None:
            on_epoch(epoch, results[0], None if checkpoint_fn is None else (lambda: checkpoint_fn()[0]))

    bar = None
    if progress:
        from tqdm import tqdm

        # a bar of steps, not epochs: an epoch of the defaults takes a minute or more on a laptop's CPU
        start = checkpoint["epoch"] if checkpoint is not None else 0
        steps = math.ceil(len(data.y_train) / cfg.train.batch_size)
        bar = tqdm(total=cfg.train.epochs * steps, initial=start * steps, unit="step",
                   desc=f"{cfg.rule.rule} seed={cfg.train.seed}")
    try:
        [history] = fit(stepper, [cfg], checkpoints=None if checkpoint is None else [checkpoint],
                        on_epoch=each_epoch, bar=bar)
    finally:
        if bar is not None:
            bar.close()
    return {"config": cfg.to_dict(), "final": history[-1] if history else {}, "history": history,
            "n_classes": data.n_classes}
