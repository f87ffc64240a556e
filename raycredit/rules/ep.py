"""ep: equilibrium propagation on the network's layered energy.

Energy, with the embedding output h_0 clamped and h_1..h_L free:

    E(h) = sum_l 1/2 ||h_l - F_l(h_{l-1})||^2 + beta * CE(head(h_L), y),   F_l(h) = h + f_l(h)

The free phase (beta = 0) has its minimum at the feedforward pass. The nudged
phase relaxes h by `ep_steps` gradient steps on E; each step's force on h_l
involves only block l and block l+1 (and the head at h_L), never a backward
pass through several layers. At the nudged equilibrium the prediction errors
satisfy h_l - F_l(h_{l-1}) = -beta dCE/dh_l + O(beta^2) (Scellier & Bengio
2017; Whittington & Bogacz 2017), so the credit is

    a_l = -(h_l^beta - F_l(h_{l-1}^beta)) / beta     (ep_credit="error")

i.e. -(h^beta - h^0)/beta of layer l with its input held at the nudged state
below. ep_credit="state_diff" uses the raw shift -(h_l^beta - h_l^free)/beta
instead, which accumulates the errors of all layers below l. The clamped
input's credit is a_0 = (dE/dh_0)/beta, the force the equilibrium exerts on it.
"""

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import LocalRule, task_loss


class EP(LocalRule):
    architectures = tuple(ARCHITECTURES)
    knobs = ("ep_beta", "ep_steps", "ep_step_size", "ep_credit")
    def energy(self, model, h0: torch.Tensor, free: list[torch.Tensor], y: torch.Tensor) -> torch.Tensor:
        """Summed over the batch: every sample's states only feel their own energy."""
        prev, e = h0, 0.0
        for l, h in enumerate(free, start=1):
            e = e + 0.5 * (h - model.step(l, prev, model.f(l, prev))).pow(2).sum()
            prev = h
        return e + self.cfg.ep_beta * task_loss(model.head(prev), y, reduction="sum")

    def relax(self, model, hs: list[torch.Tensor], y: torch.Tensor) -> list[torch.Tensor]:
        """Nudged-phase states h_1..h_L, from the free equilibrium (the feedforward pass)."""
        h0 = hs[0].detach()
        states = [h.detach() for h in hs[1:]]
        for _ in range(self.cfg.ep_steps):
            forces = self.input_grad(lambda free: self.energy(model, h0, free, y), states)
            states = [s - self.cfg.ep_step_size * g for s, g in zip(states, forces, strict=True)]
        return states

    def credits(self, model, hs, logits, y):
        beta = self.cfg.ep_beta
        nudged = self.relax(model, hs, y)
        a = [self.input_grad(lambda h0: self.energy(model, h0, nudged, y), hs[0]) / beta]
        with torch.no_grad():
            below = [hs[0].detach()] + nudged[:-1]
            for l, (h, prev) in enumerate(zip(nudged, below, strict=True), start=1):
                ref = model.step(l, prev, model.f(l, prev)) if self.cfg.ep_credit == "error" else hs[l].detach()
                a.append(-(h - ref) / beta)
        return a
