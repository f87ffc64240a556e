"""dfa: direct feedback alignment (Nøkland 2016, "Direct Feedback Alignment Provides Learning in Deep
Neural Networks").

a_l = B_l^T e with e = softmax(z) - onehot(y) = dCE/dz and a fixed random C x h_shape B_l for every layer
l = 0..L, entries ~ N(0, feedback_scale^2 / features of h_l). With the local update of `LocalRule` and
credit_norm off, the hidden layer h_l = act(W_l h_{l-1} + b_l) of a plain MLP (arch=mlp) gets
grad W_l = ((B_l^T e) * act'(W_l h_{l-1} + b_l)) h_{l-1}^T: Nøkland's update rule, exactly (a test checks
it against the hand-written formula). On a residual block the same credit reaches the block's output and
the block's own backward takes it to the block's weights. On vit_mini and small_cnn B_l is C x h_shape:
the error reaches every token / position.
"""

import math

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import Feedback, LocalRule, output_error


def dfa_feedback(shapes: list[tuple[int, ...]], n_classes: int, scale: float, generator: torch.Generator) -> Feedback:
    """B[str(l)] (C x shapes[l]) projects the output error to layer l; entries ~ N(0, scale^2 / features)."""
    return Feedback({str(l): torch.randn(n_classes, *shape, generator=generator) * (scale / math.prod(shape)**0.5)
                     for l, shape in enumerate(shapes)})


def dfa_credits(B: Feedback, logits: torch.Tensor, y: torch.Tensor) -> list[torch.Tensor]:
    e = output_error(logits, y)
    return [torch.tensordot(e, B[str(l)], dims=1) for l in range(len(B))]


class DFA(LocalRule):
    architectures = tuple(ARCHITECTURES)
    knobs = ("feedback_scale",)
    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.B = dfa_feedback(self.h_shapes, n_classes, self.cfg.feedback_scale, self.feedback_generator(cfg))

    def credits(self, model, hs, logits, y):
        return dfa_credits(self.B, logits, y)

    def jacobian_feedback(self):
        """B_l stands in for the whole forward product from h_l to the logits, dz/dh_l (Nøkland 2016): through the
        blocks, out_ln and the readout, on residual and plain networks alike."""
        return {f"l{l}": (l, self.B[str(l)]) for l in range(len(self.B))}


class DFAWarmup(DFA):
    """A learned-credit rule that uses DFA's credit for the first `warmup_ratio` of the epochs."""

    architectures = ("resmlp",)  # its credit nets take one d-vector per layer
    knobs = ("warmup_ratio", "aux_width", "aux_lr")

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        self.warm = False

    def start_epoch(self, epoch, epochs):
        self.warm = epoch <= self.cfg.warmup_ratio * epochs

    def credits(self, model, hs, logits, y):
        return super().credits(model, hs, logits, y) if self.warm else self.learned_credits(model, hs, logits, y)

    def learned_credits(self, model, hs, logits, y):
        raise NotImplementedError
