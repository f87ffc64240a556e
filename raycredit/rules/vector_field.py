"""vector_field: a vector net a_phi(h_l, t_l, s) in R^d trained on measured loss changes.

For each sample and layer, `vf_dirs` random unit directions u_m are pushed
through the rest of the network by forward passes only, giving the measured
directional derivative D_m = (CE(h_l + eps u_m) - CE(h_l - eps u_m)) / (2 eps)
(or the one-sided (CE(h_l + eps u_m) - CE(h_l)) / eps). The net is trained so
that <a_phi, u_m> matches D_m, plus `tw` * ||a_phi(h_L) - dCE/dh_L||^2 with
the exact output-local gradient. The net sees h_l normalized to unit RMS (see
`field_input`). `shuffle_control` permutes all targets across samples: a
negative control whose credit should carry no information. Like
credit_bridge it uses DFA's credit for the first `warmup_ratio` of the epochs,
while the net learns (a randomly initialized field wrecks the blocks otherwise).
"""

import torch
import torch.nn.functional as F

from raycredit.config import RuleConfig
from raycredit.rules.base import Rule, mlp, repeat_samples, task_loss
from raycredit.rules.conditioning import Conditioning, with_time
from raycredit.rules.dfa import DFAWarmup


@torch.no_grad()
def measured_slopes(rule: Rule, model, l: int, h: torch.Tensor, y: torch.Tensor, cfg: RuleConfig,
                    perm: torch.Tensor | None = None):
    """(unit directions u: M x N x d, measured directional derivatives D: M x N), both permuted by perm; the
    directions are `rule`'s random draws."""
    m, eps = cfg.vf_dirs, cfg.vf_eps
    u = rule.randn((m, *h.shape), like=h)
    u = u / u.norm(dim=-1, keepdim=True)
    ys = repeat_samples(y, m)

    def ce(shift):
        return task_loss(model.forward_from(l, (h + shift).reshape(-1, h.shape[-1])), ys,
                         reduction="none").view(m, -1)

    if cfg.one_sided:
        base = task_loss(model.forward_from(l, h), y, reduction="none")
        slopes = (ce(eps * u) - base) / eps
    else:
        slopes = (ce(eps * u) - ce(-eps * u)) / (2 * eps)
    return (u, slopes) if perm is None else (u[:, perm], slopes[:, perm])


def field_loss(rule: Rule, field, model, hs: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor,
               cfg: RuleConfig, perm: torch.Tensor | None = None):
    """The vector-field objective of the field a_l = field(h_l, l): directional matches plus the terminal term."""
    loss = 0.0
    for l in range(len(hs)):
        h = hs[l].detach()
        u, slopes = measured_slopes(rule, model, l, h, y, cfg, perm)
        loss = loss + ((u * field(h, l).unsqueeze(0)).sum(-1) - slopes).pow(2).mean()
    if cfg.tw:
        gL = rule.output_local_grad(model, hs[-1], y)
        target = gL if perm is None else gL[perm]
        loss = loss + cfg.tw * (field(hs[-1].detach(), len(hs) - 1) - target).pow(2).sum(-1).mean()
    return loss


def field_draws(cfg: RuleConfig, L: int, n: int, d: int, shuffled: bool) -> list[tuple[str, tuple[int, ...]]]:
    """The random draws of one step of `field_loss` (after the shuffle's permutation, if any)."""
    return [("randperm", (n,))] * shuffled + [("randn", (cfg.vf_dirs, n, d))] * (L + 1)


def field_input(h: torch.Tensor, l: int, L: int, s: torch.Tensor) -> torch.Tensor:
    """[h_l / RMS(h_l) (a LayerNorm without affine), t_l, s]: residual-stream growth under local updates
    (Mode 1) would otherwise move the net's input out of the range it has learned on."""
    return with_time(F.layer_norm(h, h.shape[-1:]), l, L, s)


class VectorField(DFAWarmup):
    knobs = ("s_type", "vf_dirs", "vf_eps", "one_sided", "tw", "shuffle_control")

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.cond = Conditioning(self.cfg.s_type, n_classes, self.d, self.feedback_generator(cfg, stream=1))
        self.net = mlp(self.d + 1 + self.cond.dim, self.cfg.aux_width or 2 * self.d, self.d)

    def field(self, h: torch.Tensor, l: int, s: torch.Tensor) -> torch.Tensor:
        return self.net(field_input(h, l, self.L, s))

    def learned_credits(self, model, hs, logits, y):
        s = self.cond(self, model, hs, logits, y)
        with torch.no_grad():
            return [self.field(hs[l].detach(), l, s) for l in range(self.L + 1)]

    def random_draws(self, n, d):
        return field_draws(self.cfg, self.L, n, d, self.cfg.shuffle_control)

    def aux_objective(self, model, hs, logits, y):
        s = self.cond(self, model, hs, logits, y)
        perm = self.randperm(len(y), y.device) if self.cfg.shuffle_control else None
        return field_loss(self, lambda h, l: self.field(h, l, s), model, hs, logits, y, self.cfg, perm)
