"""vector_field: a vector net a_phi(h_l, t_l, s) in R^d trained on measured loss changes.

For each sample and layer, `vf_dirs` random unit directions u_m are pushed
through the rest of the network by forward passes only, giving the measured
directional derivative D_m = (CE(h_l + eps u_m) - CE(h_l - eps u_m)) / (2 eps)
(or the one-sided (CE(h_l + eps u_m) - CE(h_l)) / eps). The net is trained so
that <a_phi, u_m> matches D_m, plus `tw` * ||a_phi(h_L) - dCE/dh_L||^2 with
the exact output-local gradient. `shuffle_control` permutes all targets across
samples: a negative control whose credit should carry no information. Like
credit_bridge it uses DFA's credit for the first `warmup_ratio` of the epochs,
while the net learns (a randomly initialized field wrecks the blocks otherwise).
"""

import torch
import torch.nn.functional as F

from raycredit.rules.base import mlp, output_local_grad
from raycredit.rules.conditioning import Conditioning, with_time
from raycredit.rules.dfa import DFAWarmup


class VectorField(DFAWarmup):
    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.cond = Conditioning(self.cfg.s_type, n_classes, self.d, self.feedback_generator(cfg, stream=1))
        self.net = mlp(self.d + 1 + self.cond.dim, self.cfg.aux_width or 2 * self.d, self.d)

    def field(self, h: torch.Tensor, l: int, s: torch.Tensor) -> torch.Tensor:
        return self.net(with_time(h, l, self.L, s))

    def learned_credits(self, model, hs, logits, y):
        s = self.cond(hs, logits, y)
        with torch.no_grad():
            return [self.field(hs[l].detach(), l, s) for l in range(self.L + 1)]

    @torch.no_grad()
    def measured_slopes(self, model, l: int, h: torch.Tensor, y: torch.Tensor, perm: torch.Tensor | None):
        """(unit directions u: M x N x d, measured directional derivatives D: M x N), D permuted by perm."""
        m, eps = self.cfg.vf_dirs, self.cfg.vf_eps
        u = torch.randn((m, *h.shape), generator=self.generator, device=h.device, dtype=h.dtype)
        u = u / u.norm(dim=-1, keepdim=True)
        ys = y.repeat(m)

        def ce(shift):
            return F.cross_entropy(model.forward_from(l, (h + shift).reshape(-1, h.shape[-1])), ys,
                                   reduction="none").view(m, -1)

        if self.cfg.one_sided:
            base = F.cross_entropy(model.forward_from(l, h), y, reduction="none")
            slopes = (ce(eps * u) - base) / eps
        else:
            slopes = (ce(eps * u) - ce(-eps * u)) / (2 * eps)
        return (u, slopes) if perm is None else (u[:, perm], slopes[:, perm])

    def aux_objective(self, model, hs, logits, y):
        s = self.cond(hs, logits, y)
        n = len(y)
        perm = torch.randperm(n, generator=self.generator, device=y.device) if self.cfg.shuffle_control else None
        loss = 0.0
        for l in range(self.L + 1):
            h = hs[l].detach()
            a = self.field(h, l, s)
            u, slopes = self.measured_slopes(model, l, h, y, perm)
            loss = loss + ((u * a.unsqueeze(0)).sum(-1) - slopes).pow(2).mean()
        if self.cfg.tw:
            gL = output_local_grad(hs[-1], logits, y)
            target = gL if perm is None else gL[perm]
            loss = loss + self.cfg.tw * (self.field(hs[-1].detach(), self.L, s) - target).pow(2).sum(-1).mean()
        return loss
