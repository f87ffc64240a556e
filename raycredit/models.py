"""The architectures: ResMLP, ViT-Mini, SmallCNN, a plain MLP and a plain 1-D CNN, behind one layered
interface.

Layer indices: h_0 is the embedding output, h_l (l = 1..L) the
output of block l. Block l (1-based) maps h_{l-1} to h_l = h_{l-1} + f_l(h_{l-1})
(or f_l(h_{l-1}) without `residual_add`). `head` is out_ln + readout, everything
after h_L. Every h_l of a model has the shape (N, *h_shape) with the width d last:

| arch | h_shape | f_l |
|---|---|---|
| resmlp | (d,) | W2 act(W1 LN(h)) |
| vit_mini | (tokens, d), patches of `patch_size` | attention + MLP of a pre-LN transformer block |
| small_cnn | (H/2, W/2, d), channels last | W2 act(W1 dwconv3x3(LN(h))), a ConvNeXt-style block |
| mlp | h_0 = the input, h_l (d,) | act(W_l h + b_l): a plain MLP, no residual, no LayerNorm |
| cnn1d | (T, d), channels last | act(conv_l(h)): a plain 1-D CNN, no residual, no LayerNorm |

Inputs arrive flattened; the image architectures reshape them to the dataset's
(C, H, W). `mlp` is the canonical network of the FA and DFA papers: h_0 is the
input itself (no embedding parameters), L hidden layers of width d, then the
readout; `residual_add`, `out_ln`, `mlp_ratio` and `w2_std` do not apply to it. `cnn1d` is the CNN of the
MNIST-1D paper made layered: a linear convolution embeds the (C, T) signal into d channels (h_0), then L layers
act(conv(h)) of d channels, all of width `kernel`, stride 1 and zero "same" padding, then the mean over the T
positions and the readout; the same knobs do not apply to it.

Every linear layer inside the blocks and the head is a `raycredit.layers.Linear`, whose backward to its input can
use a fixed feedback matrix in place of its weight: the mechanism of feedback-alignment rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from raycredit.config import ModelConfig
from raycredit.errors import DataError
from raycredit.layers import Block, Layered, Linear


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


class Conv1d(nn.Module):
    """A 1-D convolution of channels-last (N, T, C) maps (stride 1, zero "same" padding) written as a `Linear` on
    each position's window of `kernel` positions: its backward to its input can use a feedback matrix like every
    other Linear (B applied to each window's gradient, summed over the overlapping windows: the random
    transposed kernel of feedback alignment for convolutions). Same init as nn.Conv1d (fan_in = C * kernel)."""

    def __init__(self, c_in: int, c_out: int, kernel: int):
        super().__init__()
        self.kernel = kernel
        self.w = Linear(c_in * kernel, c_out)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        left = (self.kernel - 1) // 2
        windows = F.pad(h, (0, 0, left, self.kernel - 1 - left)).unfold(-2, self.kernel, 1)  # (N, T, C, kernel)
        return self.w(windows.flatten(-2))


class SignalStem(nn.Module):
    """(N, C * T) flattened signals -> (N, T, d): a linear convolution of the (C, T) signal."""

    def __init__(self, signal: tuple[int, int], d: int, kernel: int):
        super().__init__()
        self.signal = signal
        self.conv = Conv1d(signal[0], d, kernel)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x.view(-1, *self.signal).transpose(1, 2))


class ConvLayer(nn.Module):
    def __init__(self, d: int, kernel: int, act: Callable[[], nn.Module]):
        super().__init__()
        self.conv = Conv1d(d, d, kernel)
        self.act = act()

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.act(self.conv(h))


class CNN1d(Layered):
    """The module docstring's plain 1-D CNN for signals of shape (T,) or (C, T)."""

    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int, alpha: float):
        super().__init__(cfg, alpha)
        if len(in_shape) > 2:
            raise DataError(f"arch cnn1d needs signals of shape (T,) or (C, T), got examples of shape {in_shape}")
        signal = (1, *in_shape) if len(in_shape) == 1 else in_shape
        self.residual_add = False
        self.embed = SignalStem(signal, cfg.d, cfg.kernel)
        self.blocks = nn.ModuleList(ConvLayer(cfg.d, cfg.kernel, self.make_act) for _ in range(cfg.L))
        self.h_shape = (signal[1], cfg.d)
        self.out_ln = nn.Identity()
        self.readout = Linear(cfg.d, n_classes)


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


ARCHITECTURES = {"resmlp": ResMLP, "vit_mini": ViTMini, "small_cnn": SmallCNN, "mlp": MLP, "cnn1d": CNN1d}


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...] | int, n_classes: int, alpha: float = 1.0) -> Layered:
    """alpha: the synthetic data's, used by student_activation=teacher."""
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    return ARCHITECTURES[cfg.arch](cfg, shape, n_classes, alpha)
