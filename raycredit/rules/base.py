"""The shared rule interface and the local update form every non-BP rule trains its blocks with.

Credit convention: a_i (i = 0..L) is a per-sample estimate of dCE_n/dh_i, the
gradient of the sample's cross-entropy with respect to layer i. Block l
(1-based) produces h_l, so its parameters follow the gradient of the local
loss mean_n <f_l(h_{l-1}), a_l> with h_{l-1} and a_l detached; the embedding
follows mean_n <h_0, a_0>. The readout learns from the exact output-local CE
gradient, and so does out_ln, except in the layer-wise rules (fa's lillicrap
form, sign_symmetry, kolen_pollack): there the readout sends the error to
out_ln through its feedback matrix, as every layer sends it to the one below
(the published algorithm), so out_ln learns from the feedback signal. The
blocks' forward pass is cut (detach) between layers, so no hidden-layer
backprop can reach a block in a local rule.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from raycredit.config import Config


def task_loss(z: torch.Tensor, y: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """The task's loss of outputs z against targets y: the cross-entropy for class labels (integer y); for
    target vectors (float y, the toy_lq task) the quadratic cost 1/2 ||z - y||^2 summed over the outputs.
    reduction: "mean" or "sum" over samples, or "none" (per sample)."""
    if not y.is_floating_point():
        return F.cross_entropy(z, y, reduction=reduction)
    per = 0.5 * (z - y).pow(2).sum(-1)
    return per.mean() if reduction == "mean" else per.sum() if reduction == "sum" else per


def output_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-sample d task_loss / dz, detached: softmax(z) - onehot(y) for labels, z - y for target vectors."""
    if y.is_floating_point():
        return (z - y).detach()
    return (z.softmax(-1) - F.one_hot(y, z.shape[-1]).to(z.dtype)).detach()


def n_correct(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Correct predictions summed over the sample axis (z: (..., n, outputs)), as float32 (exact up to 2^24); NaN
    for target vectors, which have no accuracy."""
    if y.is_floating_point():
        return torch.full(z.shape[:-2], float("nan"), device=z.device)
    return (z.argmax(-1) == y).sum(-1).float()


def repeat_samples(y: torch.Tensor, m: int) -> torch.Tensor:
    """y's samples repeated m times along the sample axis (labels or target vectors)."""
    return y.repeat(m, *[1] * (y.dim() - 1))


def per_sample(t: torch.Tensor) -> torch.Tensor:
    """(N, *h_shape) -> (N, features): per-sample quantities treat every h as one vector."""
    return t.flatten(1)


def rms(a: torch.Tensor) -> torch.Tensor:
    """RMS per sample over all its features, shaped to broadcast against a."""
    return per_sample(a).pow(2).mean(1).sqrt().view(-1, *[1] * (a.dim() - 1))


def rms_normalize(a: torch.Tensor) -> torch.Tensor:
    """a / (RMS(a) + 1e-6), RMS per sample over all its features."""
    return a / (rms(a) + 1e-6)


def dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Per-sample inner product, shape (N,)."""
    return per_sample(a * b).sum(1)


class Feedback(nn.Module):
    """Fixed random feedback matrices by name, checkpointed with the rule (state keys `B.<name>`)."""

    def __init__(self, tensors: dict[str, torch.Tensor]):
        super().__init__()
        for name, t in tensors.items():
            self.register_buffer(name, t)

    def __getitem__(self, name: str) -> torch.Tensor:
        return self._buffers[name]

    def __len__(self) -> int:
        return len(self._buffers)


class Rule(nn.Module):
    """One learning rule. Buffers and submodules (feedback matrices, auxiliary nets) are checkpointed.

    The rule's own parameters (auxiliary nets) are trained with lr `aux_lr`
    by the same optimizer, so their optimizer state is checkpointed too.
    """

    architectures: ClassVar[tuple[str, ...]] = ("resmlp",)  # rules with per-layer d-vector nets are ResMLP-only
    # the rule's own defaults for knobs of any section (`raycredit.rules.make_config`); an explicit value wins
    defaults: ClassVar[dict] = {}
    # the rule section's knobs this class reads besides `rule`; a subclass names only its own (`uses` adds up
    # the hierarchy's). A run does not log the others: they do not apply to it
    knobs: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: Config, model: nn.Module, n_classes: int):
        super().__init__()
        self.generator: torch.Generator | None = None  # set by the trainer
        # True on a population's vmapped template (raycredit.population): gradients with respect to inputs
        # then use torch.func, and random tensors come from `drawn`, drawn per member before the step
        self.functional = False
        self.drawn: list[torch.Tensor] = []
        self.cfg = cfg.rule
        self.L = cfg.model.L
        self.d = cfg.model.d
        self.h_shape: tuple[int, ...] = tuple(model.h_shape)
        self.h_shapes: list[tuple[int, ...]] = [tuple(s) for s in model.h_shapes]
        self.n_classes = n_classes

    @classmethod
    def uses(cls) -> frozenset[str]:
        """The rule section's knobs that this rule reads (its own `knobs` and its base classes')."""
        return frozenset(k for c in cls.__mro__ for k in vars(c).get("knobs", ()))

    @classmethod
    def check_config(cls, cfg: Config) -> None:
        """Raise ConfigError for knob combinations this rule cannot run (checked before any trial starts)."""

    def feedback_generator(self, cfg: Config, stream: int = 0) -> torch.Generator:
        """CPU generator for fixed random tensors, independent of the init and batch streams (and of each other)."""
        return torch.Generator().manual_seed(cfg.train.seed * 1_000_003 + 0x5EED + 7919 * stream)

    def final_metrics(self, model: nn.Module, data) -> dict[str, float]:
        """Metrics the rule adds to its run's last epoch (the frozen baseline's fitted readout); {} by default."""
        return {}

    def exact_layers(self) -> frozenset[int]:
        """Layers whose credit is the exact gradient by construction, not an estimate (diagnostics leave them
        out of deep_cos and deep_rho unless every deep layer is exact)."""
        return frozenset()

    def feedback_pairs(self, model: nn.Module) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """{name: (feedback matrix, the forward weight of the same shape it stands in for)}, for the W-B
        alignment angles of the diagnostics; {} for rules without feedback matrices."""
        return {}

    def jacobian_feedback(self) -> dict[str, tuple[int, torch.Tensor]]:
        """{name: (layer i, B)} for feedback matrices that stand in for the Jacobian of the outputs with respect to
        h_i (dfa's B_l, outputs x d): the diagnostics' angle is to that Jacobian averaged over the probe."""
        return {}

    def trainable_params(self, model: nn.Module) -> list[nn.Parameter]:
        return [p for p in model.parameters() if p.requires_grad]

    def start_epoch(self, epoch: int, epochs: int) -> None:
        """Called before each epoch (1-based), for rules with schedules."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor):
        """(objective whose .backward() fills the update, mean CE detached, logits detached)."""
        raise NotImplementedError

    def credits(self, model: nn.Module, hs: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor):
        """Per-sample credits [a_0, ..., a_L], detached, from a forward pass (hs, logits); None if the rule has none."""
        raise NotImplementedError

    def input_grad(self, fn, x, keep_graph: bool = False):
        """Gradient of the scalar fn(x) with respect to x (a tensor or a list of tensors), detached unless
        keep_graph (then it stays a function of the parameters fn uses). torch.func.grad in a population's
        vmapped step; otherwise torch.autograd.grad, several times cheaper per call on small models."""
        if self.functional:
            g = torch.func.grad(fn)(x.detach() if torch.is_tensor(x) else [t.detach() for t in x])
        else:
            with torch.enable_grad():
                xs = x.detach().requires_grad_() if torch.is_tensor(x) else [t.detach().requires_grad_() for t in x]
                g = torch.autograd.grad(fn(xs), xs, create_graph=keep_graph)
                g = g[0] if torch.is_tensor(x) else list(g)
        if keep_graph:
            return g
        return g.detach() if torch.is_tensor(g) else [t.detach() for t in g]

    def vjp(self, fn, x: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """v^T J_fn(x), detached: the pull-back of v through fn at x."""
        if self.functional:
            return torch.func.vjp(fn, x.detach())[1](v)[0].detach()
        with torch.enable_grad():
            x = x.detach().requires_grad_()
            return torch.autograd.grad(fn(x), x, grad_outputs=v)[0].detach()

    def output_local_grad(self, model: nn.Module, hL: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Exact per-sample dCE_n/dh_L (the task loss's) through the head only."""
        return self.input_grad(lambda h: task_loss(model.head(h), y, reduction="sum"), hL)

    def random_draws(self, n: int, d: int) -> list[tuple[str, tuple[int, ...]]]:
        """The random tensors one training step on n samples (width d) draws from `step_generator`, in order:
        ("randn", shape) or ("randperm", (n,)). A population draws them per member before its vmapped step."""
        return []

    def step_generator(self, device) -> torch.Generator:
        """The generator of a training step's random draws (the trainer's, checkpointed)."""
        return self.generator

    def randn(self, shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
        if self.functional:
            return self.drawn.pop(0).to(like.dtype)
        return torch.randn(shape, generator=self.step_generator(like.device), device=like.device, dtype=like.dtype)

    def randperm(self, n: int, device) -> torch.Tensor:
        if self.functional:
            return self.drawn.pop(0)
        return torch.randperm(n, generator=self.step_generator(device), device=device)


class LocalRule(Rule):
    """Rules that train each block from a credit vector through the local loss <f_l, a_l>.

    While `model_learns` is False (a prefit phase), or throughout with freeze_model, the objective is the
    auxiliary loss alone: the model's parameters get no gradient at all.
    """

    model_learns = True
    knobs = ("credit_norm", "penalty_lam")

    def __init__(self, cfg: Config, model: nn.Module, n_classes: int):
        super().__init__(cfg, model, n_classes)
        self.freeze_model = cfg.train.freeze_model
        # a buffer rather than a float so that a population's members can each have their own
        self.register_buffer("penalty_lam", torch.tensor(float(cfg.rule.penalty_lam)), persistent=False)

    def loss(self, model, x, y):
        h0 = model.embed(x)
        h = h0.detach()
        hs, fs = [h], []
        for l in range(1, self.L + 1):
            f = model.f(l, h)
            fs.append(f)
            h = model.step(l, h, f.detach()).detach()
            hs.append(h)
        logits = model.head(hs[-1])
        ce = task_loss(logits, y)
        a = self.credits(model, hs, logits, y)
        if self.cfg.credit_norm:
            a = [rms_normalize(ai) for ai in a]
        local = dot(h0, a[0]).mean()
        for f, al in zip(fs, a[1:], strict=True):
            # always added (an exact 0 at penalty_lam = 0): population members may differ in penalty_lam
            local = local + dot(f, al).mean() + self.penalty_lam * dot(f, f).mean()
        aux = self.aux_objective(model, hs, logits, y)
        if self.model_learns and not self.freeze_model:
            return ce + local + aux, ce.detach(), logits.detach()
        # a rule without auxiliary nets then learns nothing: a constant objective, which the trainers skip
        return (aux if torch.is_tensor(aux) else ce.detach() * 0), ce.detach(), logits.detach()

    def aux_objective(self, model, hs: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor):
        """Loss of the rule's auxiliary nets on this batch (hs detached); 0 for rules without any.

        Randomness must come from `self.generator` (the trainer's checkpointed generator).
        """
        return 0.0


def mlp(d_in: int, width: int, d_out: int) -> nn.Sequential:
    """The auxiliary nets' shape: d_in -> width -> d_out with a GELU."""
    return nn.Sequential(nn.Linear(d_in, width), nn.GELU(), nn.Linear(width, d_out))
