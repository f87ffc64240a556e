"""The architectures: ResMLP (SPEC §2), ViT-Mini and SmallCNN, behind one layered interface.

Layer indices follow SPEC §2: h_0 is the embedding output, h_l (l = 1..L) the
output of block l. Block l (1-based) maps h_{l-1} to h_l = h_{l-1} + f_l(h_{l-1})
(or f_l(h_{l-1}) without `residual_add`). `head` is out_ln + readout, everything
after h_L. Every h_l of a model has the shape (N, *h_shape) with the width d last:

| arch | h_shape | f_l |
|---|---|---|
| resmlp | (d,) | W2 act(W1 LN(h)) |
| vit_mini | (tokens, d), patches of `patch_size` | attention + MLP of a pre-LN transformer block |
| small_cnn | (H/2, W/2, d), channels last | W2 act(W1 dwconv3x3(LN(h))), a ConvNeXt-style block |
| mlp | h_0 = the input, h_l (d,) | act(W_l h + b_l): a plain MLP, no residual, no LayerNorm |

Inputs arrive flattened; the image architectures reshape them to the dataset's
(C, H, W). `mlp` is the canonical network of the FA and DFA papers: h_0 is the
input itself (no embedding parameters), L hidden layers of width d, then the
readout; `residual_add`, `out_ln`, `mlp_ratio` and `w2_std` do not apply to it.

Every linear layer inside the blocks and the head is a `Linear`, whose
backward to its input can use a fixed feedback matrix in place of its weight
(`Linear.feedback`): the mechanism of feedback-alignment rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from functools import partial

import torch
import torch.nn.functional as F
from torch import nn

from raycredit.config import ModelConfig
from raycredit.data import phi
from raycredit.errors import DataError


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


class ResMLP(Layered):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int, alpha: float):
        super().__init__(cfg, alpha)
        self.embed = nn.Linear(math.prod(in_shape), cfg.d)
        self.blocks = nn.ModuleList(Block(cfg.d, self.hidden, self.make_act, cfg.w2_std, cfg.block_ln)
                                    for _ in range(cfg.L))
        self.make_head(cfg, n_classes)


def image_shape(arch: str, in_shape: tuple[int, ...]) -> tuple[int, int, int]:
    """(C, H, W) of the inputs; (H, W) images get one channel."""
    if len(in_shape) == 2:
        return (1, *in_shape)
    if len(in_shape) != 3:
        raise DataError(f"arch {arch} needs image inputs of shape (C, H, W), got examples of shape {in_shape}")
    return in_shape


class PatchEmbed(nn.Module):
    def __init__(self, shape: tuple[int, int, int], d: int, patch: int):
        super().__init__()
        c, hgt, wid = shape
        self.shape = shape
        self.proj = nn.Conv2d(c, d, patch, stride=patch)
        self.tokens = (hgt // patch) * (wid // patch)
        self.pos = nn.Parameter(torch.randn(1, self.tokens, d) * 0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x.view(-1, *self.shape)).flatten(2).transpose(1, 2) + self.pos


class AttentionBlock(nn.Module):
    """f(h) = a + W2 act(W1 LN2(h + a)) with a = Attn(LN1(h)): the increment of one pre-LN transformer block."""

    def __init__(self, d: int, hidden: int, heads: int, act: Callable[[], nn.Module], w2_std: float):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d)
        self.qkv, self.proj = Linear(d, 3 * d), Linear(d, d)
        self.mlp = Block(d, hidden, act, w2_std)  # includes LN2
        nn.init.normal_(self.proj.weight, std=w2_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        q, k, v = self.qkv(self.ln(h)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
        return a + self.mlp(h + a)


class ViTMini(Layered):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int, alpha: float):
        super().__init__(cfg, alpha)
        shape = image_shape(cfg.arch, in_shape)
        if shape[1] % cfg.patch_size or shape[2] % cfg.patch_size:
            raise DataError(f"patch_size: {cfg.patch_size} does not divide the {shape[1]}x{shape[2]} images")
        self.embed = PatchEmbed(shape, cfg.d, cfg.patch_size)
        self.blocks = nn.ModuleList(AttentionBlock(cfg.d, self.hidden, cfg.heads, self.make_act, cfg.w2_std)
                                    for _ in range(cfg.L))
        self.h_shape = (self.embed.tokens, cfg.d)
        self.make_head(cfg, n_classes)


class ConvStem(nn.Module):
    def __init__(self, shape: tuple[int, int, int], d: int):
        super().__init__()
        self.shape = shape
        self.conv = nn.Conv2d(shape[0], d, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.view(-1, *self.shape)).permute(0, 2, 3, 1)


class ConvBlock(Block):
    """W2 act(W1 dwconv3x3(LN(h))) on channels-last maps: W1, W2 are 1x1 convolutions."""

    def __init__(self, d: int, hidden: int, act: Callable[[], nn.Module], w2_std: float):
        super().__init__(d, hidden, act, w2_std)
        self.dw = nn.Conv2d(d, d, 3, padding=1, groups=d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.dw(self.ln(h).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.w2(self.act(self.w1(z)))


class SmallCNN(Layered):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int, alpha: float):
        super().__init__(cfg, alpha)
        shape = image_shape(cfg.arch, in_shape)
        self.embed = ConvStem(shape, cfg.d)
        self.blocks = nn.ModuleList(ConvBlock(cfg.d, self.hidden, self.make_act, cfg.w2_std) for _ in range(cfg.L))
        self.h_shape = ((shape[1] + 1) // 2, (shape[2] + 1) // 2, cfg.d)
        self.make_head(cfg, n_classes)


class Dense(nn.Module):
    """One hidden layer of a plain MLP: act(W h + b), PyTorch's default init."""

    def __init__(self, d_in: int, d: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.w = Linear(d_in, d)
        self.act = act()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.w(h))


class MLP(Layered):
    """x -> L hidden layers act(W_l h + b_l) of width d -> readout: no residual, no LayerNorm (Lillicrap et al.
    2016; Nokland 2016). h_0 is the (flattened) input."""

    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int, alpha: float):
        super().__init__(cfg, alpha)
        self.residual_add = False
        self.in_dim = math.prod(in_shape)
        self.embed = nn.Identity()
        self.blocks = nn.ModuleList(Dense(self.in_dim if l == 0 else cfg.d, cfg.d, self.make_act)
                                    for l in range(cfg.L))
        self.out_ln = nn.Identity()
        self.readout = Linear(cfg.d, n_classes)

    @property
    def h0_shape(self) -> tuple[int, ...]:
        return (self.in_dim,)


ARCHITECTURES = {"resmlp": ResMLP, "vit_mini": ViTMini, "small_cnn": SmallCNN, "mlp": MLP}


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...] | int, n_classes: int, alpha: float = 1.0) -> Layered:
    """alpha: the synthetic data's, used by student_activation=teacher."""
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    return ARCHITECTURES[cfg.arch](cfg, shape, n_classes, alpha)
