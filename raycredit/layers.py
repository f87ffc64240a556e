"""The layered interface every architecture implements (`Layered`: embed, blocks, head; h_0..h_L) and its parts:
`Linear`, whose backward to its input can use a fixed feedback matrix in place of its weight (`Linear.feedback`,
the mechanism of feedback-alignment rules), the residual MLP `Block` and the blocks' nonlinearities."""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from raycredit.config import ModelConfig
from raycredit.data import phi


class FeedbackLinear(torch.autograd.Function):
    """y = x W^T + b whose backward to x is g B (B has W's shape) instead of g W; W and b get their true
    gradients, and B, when it requires one, W's gradient. With B = W it is exactly a linear layer. Written in
    the functorch form (setup_context, generated vmap rule) so that population mode can vmap and
    torch.func.grad it."""

    generate_vmap_rule = True

    @staticmethod
    def forward(x, weight, bias, feedback):
        return F.linear(x, weight, bias)

    @staticmethod
    def setup_context(ctx, inputs, output):
        x, weight, bias, feedback = inputs
        ctx.save_for_backward(x, feedback)
        ctx.has_bias = bias is not None

    @staticmethod
    def backward(ctx, g):
        x, feedback = ctx.saved_tensors
        g2, x2 = g.reshape(-1, g.shape[-1]), x.reshape(-1, x.shape[-1])
        grad_x = g @ feedback.to(g.dtype)
        grad_w = g2.T @ x2.to(g.dtype)
        # a learned feedback (kolen_pollack) gets the forward weight's own gradient: the same update as W
        return grad_x, grad_w, g2.sum(0) if ctx.has_bias else None, grad_w if ctx.needs_input_grad[3] else None


class Linear(nn.Linear):
    """nn.Linear whose backward to its input uses `feedback` (a tensor of the weight's shape) while one is set."""

    feedback: torch.Tensor | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.feedback is None:
            return F.linear(x, self.weight, self.bias)
        return FeedbackLinear.apply(x, self.weight, self.bias, self.feedback)


class PhiAlpha(nn.Module):
    """The synthetic teacher's nonlinearity (1 - alpha) z + alpha tanh(z)."""

    def __init__(self, alpha: float):
        super().__init__()
        self.alpha = alpha

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return phi(z, self.alpha)


ACTIVATIONS = {"gelu": nn.GELU, "relu": nn.ReLU, "tanh": nn.Tanh}


def activation(cfg: ModelConfig, alpha: float) -> Callable[[], nn.Module]:
    """The blocks' nonlinearity: `activation`, or with student_activation=teacher phi_alpha at the data's alpha."""
    return partial(PhiAlpha, alpha) if cfg.student_activation == "teacher" else ACTIVATIONS[cfg.activation]


class Block(nn.Module):
    def __init__(self, d: int, hidden: int, act: Callable[[], nn.Module], w2_std: float, ln: bool = True):
        super().__init__()
        self.ln = nn.LayerNorm(d) if ln else nn.Identity()
        self.w1 = Linear(d, hidden)
        self.w2 = Linear(hidden, d)
        self.act = act()
        nn.init.normal_(self.w2.weight, std=w2_std)
        nn.init.zeros_(self.w2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(self.ln(h))))


class Layered(nn.Module):
    """embed -> blocks -> head. Subclasses build embed and blocks, then call make_head (init order = RNG order)."""

    def __init__(self, cfg: ModelConfig, alpha: float):
        super().__init__()
        self.make_act = activation(cfg, alpha)
        self.residual_add = cfg.residual_add
        self.L = cfg.L
        self.hidden = max(1, round(cfg.mlp_ratio * cfg.d))
        self.h_shape: tuple[int, ...] = (cfg.d,)  # of h_1..h_L

    @property
    def h_shapes(self) -> list[tuple[int, ...]]:
        """Shape of each h_i, i = 0..L (without the batch axis)."""
        return [self.h0_shape] + [self.h_shape] * self.L

    @property
    def h0_shape(self) -> tuple[int, ...]:
        return self.h_shape

    def make_head(self, cfg: ModelConfig, n_classes: int) -> None:
        self.out_ln = nn.LayerNorm(cfg.d) if cfg.out_ln else nn.Identity()
        self.readout = Linear(cfg.d, n_classes)

    def pool(self, h: torch.Tensor) -> torch.Tensor:
        """(N, *h_shape) -> (N, d)."""
        return h.flatten(1, -2).mean(1) if h.dim() > 2 else h

    def f(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """f_l(h) of block l (1-based)."""
        return self.blocks[l - 1](h)

    def step(self, l: int, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """h_l from h_{l-1} and f_l(h_{l-1})."""
        return h + f if self.residual_add else f

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.readout(self.pool(self.out_ln(h)))

    def forward_from(self, i: int, h: torch.Tensor) -> torch.Tensor:
        """Logits from h_i, through blocks i+1..L and the head."""
        for l in range(i + 1, self.L + 1):
            h = self.step(l, h, self.f(l, h))
        return self.head(h)

    def hiddens(self, x: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """Connected forward: ([h_0, ..., h_L], logits)."""
        hs = [self.embed(x)]
        for l in range(1, self.L + 1):
            hs.append(self.step(l, hs[-1], self.f(l, hs[-1])))
        return hs, self.head(hs[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_from(0, self.embed(x))

    def block_params(self) -> list[nn.Parameter]:
        return list(self.blocks.parameters())

    def head_params(self) -> list[nn.Parameter]:
        return list(self.out_ln.parameters()) + list(self.readout.parameters())
