"""scaffold: a_l = alpha * aux_l + (1 - alpha) * DFA_l, aux from a continuously trained auxiliary.

The reference study's blend dissection (phases 9-10) as one rule. Schedule over the E epochs:

1. warm-up: the first `warmup_ratio` of the epochs use DFA's credit alone and the auxiliary does not
   learn (the reference study's hand-off from a DFA trajectory at t0);
2. prefit: the next `prefit_epochs` epochs train only the auxiliary, on the model as it stands
   (frozen; its metrics are still logged), so `epochs = E + prefit_epochs` trains the model as long
   as `dfa` with E epochs;
3. blend: a_l = alpha aux_l + (1 - alpha) DFA_l, with aux_l rescaled per sample to DFA_l's RMS, so
   that alpha mixes directions rather than magnitudes (a net trained on loss slopes outputs vectors
   orders of magnitude smaller than DFA's). The auxiliary learns for `freeze_after` blended epochs
   (-1: throughout); after the freeze alpha goes linearly to `decay_to` at the last epoch (-1: stays).
   With `refit_every` K > 0 (the reference study's 9B periodic refit) the blended epochs instead cycle through K
   epochs with the auxiliary frozen and `refit_epochs` R epochs in which only the auxiliary learns.
   With `blend_layers` n > 0 (9C, top-down) only the last n blocks' credit is blended; the layers below
   keep DFA's.

A scaffold branch from a `dfa` run at epoch t0 (`raycredit.lineage`) whose warm-up is t0 epochs trains
exactly like a scaffold run from scratch: the warm-up is DFA, step for step.

Auxiliary kinds (`aux_kind`); all but gaussian_noise learn the vector-field objective of
`raycredit.rules.vector_field` (measured loss slopes along random directions, terminal weight `tw`),
except where stated:

| kind | aux_l | learns from |
|---|---|---|
| vector_field | MLP(h_l / RMS(h_l), t_l, s) as in the vector_field rule | measured slopes; may be prefit |
| random_trainable | MLP(h_l, t_l, s) | measured slopes from its random init (never prefit: the study's "random Vec") |
| shuffled_trainable | MLP(h_l, t_l, s) | slopes shuffled across samples: trainable but semantically empty |
| perlayer_vector | one trainable vector v_l per layer | measured slopes |
| time_only | MLP(t_l) | measured slopes: depth but no state |
| constant_input | MLP(1), the same for every layer | measured slopes: neither depth nor state |
| zero_target | MLP(h_l, t_l, s) | the target 0 |
| gaussian_noise | fresh N(0, I) per step | nothing |

With `prefit_epochs` = 0, vector_field and random_trainable train the same net the same way;
the reference study names them apart by whether the field was prefit, and so do the searches.

The auxiliary's randomness (directions, shuffles, noise) comes from the rule's own generator, saved
in the checkpoint, so the batch order is DFA's and alpha = 0 trains exactly like `dfa`.
"""

import torch
from torch import nn

from raycredit.config import RuleConfig
from raycredit.errors import ConfigError
from raycredit.rules.base import mlp, rms
from raycredit.rules.conditioning import Conditioning
from raycredit.rules.dfa import DFA
from raycredit.rules.vector_field import field_draws, field_input, field_loss


def aux_kinds() -> tuple[str, ...]:
    return RuleConfig.__dataclass_fields__["aux_kind"].metadata["choices"]


STATE_KINDS = ("vector_field", "random_trainable", "shuffled_trainable", "zero_target")


class Scaffold(DFA):
    architectures = ("resmlp",)  # its auxiliary nets take one d-vector per layer
    knobs = ("s_type", "warmup_ratio", "blend_alpha", "aux_kind", "freeze_after", "decay_to", "prefit_epochs",
             "refit_every", "refit_epochs", "blend_layers", "aux_width", "aux_lr",
             "vf_dirs", "vf_eps", "one_sided", "tw")  # the last four: the vector-field objective its aux learns

    @classmethod
    def check_config(cls, cfg):
        c, E = cfg.rule, cfg.train.epochs
        if c.aux_kind == "gaussian_noise" and (c.prefit_epochs or c.freeze_after >= 0):
            raise ConfigError("aux_kind: gaussian_noise has nothing to prefit or freeze")
        if c.aux_kind == "random_trainable" and c.prefit_epochs:
            raise ConfigError("prefit_epochs: random_trainable is the un-prefit control; prefit vector_field instead")
        if c.decay_to != -1 and c.decay_to < 0:
            raise ConfigError(f"decay_to: {c.decay_to!r} must be -1 (no decay) or in [0, 1]")
        if c.decay_to >= 0 and c.freeze_after < 0:
            raise ConfigError("decay_to: the decay starts at the freeze; set freeze_after too")
        if c.refit_every and (c.aux_kind == "gaussian_noise" or c.freeze_after >= 0):
            raise ConfigError("refit_every: a periodic refit needs a learning auxiliary and no freeze_after")
        if c.blend_layers > cfg.model.L:
            raise ConfigError(f"blend_layers: {c.blend_layers} is more than the L={cfg.model.L} blocks")
        if int(c.warmup_ratio * E) + c.prefit_epochs >= E:
            raise ConfigError(f"prefit_epochs: warm-up ({int(c.warmup_ratio * E)}) + prefit ({c.prefit_epochs}) "
                              f"epochs leave no blended epoch of epochs={E}")

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        c = self.cfg
        self.aux_seed = cfg.train.seed * 1_000_003 + 0xA0C5
        self._aux_gen, self._aux_gen_state = None, None
        width = c.aux_width or 2 * self.d
        if c.aux_kind in STATE_KINDS:
            self.cond = Conditioning(c.s_type, n_classes, self.d, self.feedback_generator(cfg, stream=1))
            self.net = mlp(self.d + 1 + self.cond.dim, width, self.d)
        elif c.aux_kind in ("time_only", "constant_input"):
            self.net = mlp(1, width, self.d)
        elif c.aux_kind == "perlayer_vector":
            self.vec = nn.Parameter(torch.randn(self.L + 1, self.d, generator=self.feedback_generator(cfg, 2))
                                    / self.d**0.5)
        self.warm_epochs = int(c.warmup_ratio * cfg.train.epochs)
        self.alpha, self.blending, self.aux_learns = c.blend_alpha, False, False

    def start_epoch(self, epoch, epochs):
        c = self.cfg
        b = epoch - self.warm_epochs - c.prefit_epochs  # blended epoch index, 1-based
        prefit = self.warm_epochs < epoch <= self.warm_epochs + c.prefit_epochs
        refit = c.refit_every > 0 and b >= 1 and (b - 1) % (c.refit_every + c.refit_epochs) >= c.refit_every
        self.model_learns, self.blending = not (prefit or refit), b >= 1
        self.aux_learns = c.aux_kind != "gaussian_noise" and (prefit or self.blending and (
            refit if c.refit_every else c.freeze_after < 0 or b <= c.freeze_after))
        self.alpha = c.blend_alpha
        if self.blending and c.decay_to >= 0 and b > c.freeze_after:
            left = epochs - self.warm_epochs - c.prefit_epochs - c.freeze_after
            self.alpha += (c.decay_to - c.blend_alpha) * (b - c.freeze_after) / left

    def aux_generator(self, device) -> torch.Generator:
        if self._aux_gen is None:
            self._aux_gen = torch.Generator(device=device).manual_seed(self.aux_seed)
            if self._aux_gen_state is not None:
                self._aux_gen.set_state(self._aux_gen_state)
        return self._aux_gen

    def step_generator(self, device) -> torch.Generator:
        return self.aux_generator(device)

    def random_draws(self, n, d):
        c = self.cfg
        if c.aux_kind == "gaussian_noise":
            blended = c.blend_layers or self.L + 1
            return [("randn", (n, d))] * blended if self.blending and self.alpha != 0.0 else []
        if not self.aux_learns or c.aux_kind == "zero_target":
            return []
        return field_draws(c, self.L, n, d, c.aux_kind == "shuffled_trainable")

    def get_extra_state(self):
        return {"aux_generator": self.aux_generator(self.B["0"].device).get_state()}

    def set_extra_state(self, state):
        self._aux_gen, self._aux_gen_state = None, state["aux_generator"]

    def field(self, h: torch.Tensor, l: int, s: torch.Tensor | None) -> torch.Tensor:
        kind = self.cfg.aux_kind
        if kind in STATE_KINDS:
            return self.net(field_input(h, l, self.L, s))
        if kind == "perlayer_vector":
            return self.vec[l].expand_as(h)
        if kind == "gaussian_noise":
            return self.randn(h.shape, like=h)
        code = l / self.L if kind == "time_only" else 1.0
        return self.net(torch.full_like(h[:, :1], code))

    def code(self, model, hs, logits, y):
        return self.cond(self, model, hs, logits, y) if self.cfg.aux_kind in STATE_KINDS else None

    def credits(self, model, hs, logits, y):
        dfa = super().credits(model, hs, logits, y)
        if not self.blending or self.alpha == 0.0:
            return dfa
        s = self.code(model, hs, logits, y)
        with torch.no_grad():
            out = []
            for l, a_dfa in enumerate(dfa):
                if self.cfg.blend_layers and l <= self.L - self.cfg.blend_layers:
                    out.append(a_dfa)
                    continue
                aux = self.field(hs[l].detach(), l, s)
                aux = aux * (rms(a_dfa) / rms(aux).clamp_min(torch.finfo(aux.dtype).tiny))
                out.append(self.alpha * aux + (1 - self.alpha) * a_dfa)
            return out

    def aux_objective(self, model, hs, logits, y):
        if not self.aux_learns:
            return 0.0
        c, s = self.cfg, self.code(model, hs, logits, y)
        if c.aux_kind == "zero_target":
            return sum(self.field(h.detach(), l, s).pow(2).sum(-1).mean() for l, h in enumerate(hs))
        perm = self.randperm(len(y), y.device) if c.aux_kind == "shuffled_trainable" else None
        return field_loss(self, lambda h, l: self.field(h, l, s), model, hs, logits, y, c, perm)
