"""frozen: the frozen-blocks baseline. Blocks (and by default the embedding) stay at init; the head learns.

With train_embedding the embedding learns from the true gradient through the
frozen blocks, so the baseline measures what untrained blocks allow.
"""

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import Rule, task_loss


class Frozen(Rule):
    architectures = tuple(ARCHITECTURES)

    def __init__(self, cfg, model, n_classes):
        super().__init__(cfg, model, n_classes)
        frozen = model.block_params() + ([] if self.cfg.train_embedding else list(model.embed.parameters()))
        for p in frozen:
            p.requires_grad_(False)

    def loss(self, model, x, y):
        with torch.set_grad_enabled(self.cfg.train_embedding):
            h = model.embed(x)
            for l in range(1, self.L + 1):
                h = model.step(l, h, model.f(l, h))
        logits = model.head(h)
        ce = task_loss(logits, y)
        return ce, ce.detach(), logits.detach()

    def credits(self, model, hs, logits, y):
        return None
