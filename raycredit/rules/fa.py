"""fa: feedback alignment. a_L is the exact output-local gradient; a_l = B_l a_{l+1} with fixed random d x d B_l.

On vit_mini and small_cnn B_l acts on the width d of every token / position (a random 1x1 feedback).
"""

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import LocalRule, output_local_grad


class FA(LocalRule):
    architectures = tuple(ARCHITECTURES)
    population = True
    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        g = self.feedback_generator(cfg)
        std = self.cfg.feedback_scale / self.d**0.5
        # B[l] maps a_{l+1} to a_l, l = 0..L-1
        self.register_buffer("B", torch.randn(self.L, self.d, self.d, generator=g) * std)

    def credits(self, model, hs, logits, y):
        a = [output_local_grad(model, hs[-1], y, self.functional)]
        for l in range(self.L - 1, -1, -1):
            a.append(a[-1] @ self.B[l].T)
        return a[::-1]
