"""state_bridge: per-layer bridge nets S_l(h_l) ~ h_L; credit a_l = J_{S_l}(h_l)^T dCE/dh_L.

Each bridge is trained on detached states with the normalized MSE
||S_l(h_l) - h_L||^2 / (||h_L||^2 + 1e-6); dCE/dh_L is the exact output-local
gradient, so a_L is exact and a_l carries the bridge's Jacobian in place of
the network's.
"""

from torch import nn

from raycredit.rules.base import LocalRule, mlp


class StateBridge(LocalRule):
    knobs = ("aux_width", "aux_lr")

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        width = self.cfg.aux_width or 2 * self.d
        self.bridges = nn.ModuleList(mlp(self.d, width, self.d) for _ in range(self.L))  # S_0 .. S_{L-1}

    def exact_layers(self):
        return frozenset({self.L})

    def credits(self, model, hs, logits, y):
        gL = self.output_local_grad(model, hs[-1], y)
        return [self.vjp(bridge, hs[l], gL) for l, bridge in enumerate(self.bridges)] + [gL]

    def aux_objective(self, model, hs, logits, y):
        target = hs[-1].detach()
        scale = target.pow(2).sum(-1) + 1e-6
        return sum(((bridge(h.detach()) - target).pow(2).sum(-1) / scale).mean()
                   for bridge, h in zip(self.bridges, hs[:-1], strict=True))
