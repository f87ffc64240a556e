"""dfa: direct feedback alignment. a_l = B_l^T e with e = softmax(z) - onehot(y) and fixed random C x d B_l.

On vit_mini and small_cnn B_l is C x h_shape: the error reaches every token / position.
"""

import math

import torch
import torch.nn.functional as F

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import LocalRule


def dfa_feedback(L: int, n_classes: int, h_shape: tuple[int, ...], scale: float,
                 generator: torch.Generator) -> torch.Tensor:
    """B[l] (C x h_shape) projects the output error to layer l, l = 0..L; entries ~ N(0, scale^2 / features)."""
    return torch.randn(L + 1, n_classes, *h_shape, generator=generator) * (scale / math.prod(h_shape)**0.5)


def dfa_credits(B: torch.Tensor, logits: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    e = (logits.softmax(-1) - F.one_hot(y, B.shape[1]).to(logits.dtype)).detach()
    return [torch.tensordot(e, B[l], dims=1) for l in range(B.shape[0])]


class DFA(LocalRule):
    architectures = tuple(ARCHITECTURES)
    population = True
    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.register_buffer("B", dfa_feedback(self.L, n_classes, self.h_shape, self.cfg.feedback_scale,
                                               self.feedback_generator(cfg)))

    def credits(self, model, hs, logits, y):
        return dfa_credits(self.B, logits, y)


class DFAWarmup(DFA):
    """A learned-credit rule that uses DFA's credit for the first `warmup_ratio` of the epochs."""

    architectures = ("resmlp",)  # its credit nets take one d-vector per layer

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.warm = False

    def start_epoch(self, epoch, epochs):
        self.warm = epoch <= self.cfg.warmup_ratio * epochs

    def credits(self, model, hs, logits, y):
        return super().credits(model, hs, logits, y) if self.warm else self.learned_credits(model, hs, logits, y)

    def learned_credits(self, model, hs, logits, y):
        raise NotImplementedError
