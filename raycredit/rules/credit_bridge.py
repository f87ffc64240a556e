"""credit_bridge: a scalar value net V(h_l, t_l, s); the credit is a_l = grad_h V(h_l, t_l, s).

V is trained on detached states with
- the terminal value: V(h_L, t_L, s) ~ CE of the sample;
- terminal gradient matching, weight `tgw`: grad_h V(h_L) ~ dCE/dh_L (exact, output-local);
- bridge consistency for l < L: V(h_l) ~ -T log mean_k exp(-V(h_{l+1} + sigma xi_k) / T), a soft-min
  over `cb_samples` noisy successors with temperature T = `cb_temp` (the mean as T grows).
DFA's credit is used for the first `warmup_ratio` of the epochs while V learns.
"""

import math

import torch

from raycredit.rules.base import mlp, task_loss
from raycredit.rules.conditioning import Conditioning, with_time
from raycredit.rules.dfa import DFAWarmup


class CreditBridge(DFAWarmup):
    knobs = ("s_type", "tgw", "cb_samples", "cb_sigma", "cb_temp")

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.cond = Conditioning(self.cfg.s_type, n_classes, self.d, self.feedback_generator(cfg, stream=1))
        self.value = mlp(self.d + 1 + self.cond.dim, self.cfg.aux_width or 2 * self.d, 1)

    def V(self, h: torch.Tensor, l: int, s: torch.Tensor) -> torch.Tensor:
        return self.value(with_time(h, l, self.L, s)).squeeze(-1)

    def grad_V(self, h: torch.Tensor, l: int, s: torch.Tensor, create_graph: bool = False) -> torch.Tensor:
        return self.input_grad(lambda h: self.V(h, l, s).sum(), h, keep_graph=create_graph)

    def learned_credits(self, model, hs, logits, y):
        s = self.cond(self, model, hs, logits, y)
        return [self.grad_V(hs[l], l, s).detach() for l in range(self.L + 1)]

    def random_draws(self, n, d):
        return [("randn", (self.cfg.cb_samples, n, d))] * self.L

    def aux_objective(self, model, hs, logits, y):
        c = self.cfg
        s = self.cond(self, model, hs, logits, y)
        hL = hs[-1].detach()
        ce = task_loss(logits.detach(), y, reduction="none")
        loss = (self.V(hL, self.L, s) - ce).pow(2).mean()
        if c.tgw:
            gL = self.output_local_grad(model, hs[-1], y)
            loss = loss + c.tgw * (self.grad_V(hL, self.L, s, create_graph=True) - gL).pow(2).sum(-1).mean()
        for l in range(self.L):
            with torch.no_grad():
                nxt = hs[l + 1].detach()
                noise = self.randn((c.cb_samples, *nxt.shape), like=nxt)
                succ = torch.stack([self.V(nxt + c.cb_sigma * z, l + 1, s) for z in noise])
                target = -c.cb_temp * (torch.logsumexp(-succ / c.cb_temp, 0) - math.log(c.cb_samples))
            loss = loss + (self.V(hs[l].detach(), l, s) - target).pow(2).mean()
        return loss
