"""bp: end-to-end backprop; its credit is the true per-sample gradient."""

import torch

from raycredit.models import ARCHITECTURES
from raycredit.rules.base import Rule, task_loss


class BP(Rule):
    architectures = tuple(ARCHITECTURES)
    def loss(self, model, x, y):
        logits = model(x)
        ce = task_loss(logits, y)
        return ce, ce.detach(), logits.detach()

    def credits(self, model, hs, logits, y):
        ce_sum = task_loss(logits, y, reduction="sum")
        return [g.detach() for g in torch.autograd.grad(ce_sum, hs, retain_graph=True)]
