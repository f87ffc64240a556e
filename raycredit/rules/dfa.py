"""dfa: direct feedback alignment. a_l = B_l^T e with e = softmax(z) - onehot(y) and fixed random C x d B_l."""

import torch
import torch.nn.functional as F

from raycredit.rules.base import LocalRule


class DFA(LocalRule):
    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        g = self.feedback_generator(cfg)
        std = self.cfg.feedback_scale / self.d**0.5
        # B[l] projects the output error to layer l, l = 0..L
        self.register_buffer("B", torch.randn(self.L + 1, n_classes, self.d, generator=g) * std)

    def credits(self, model, hs, logits, y):
        e = (logits.softmax(-1) - F.one_hot(y, self.n_classes).to(logits.dtype)).detach()
        return [e @ self.B[l] for l in range(self.L + 1)]
