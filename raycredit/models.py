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

Inputs arrive flattened; the image architectures reshape them to the dataset's
(C, H, W).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from raycredit.config import ModelConfig
from raycredit.errors import DataError


class Block(nn.Module):
    def __init__(self, d: int, hidden: int, activation: str, w2_std: float):
        super().__init__()
        self.ln = nn.LayerNorm(d)
        self.w1 = nn.Linear(d, hidden)
        self.w2 = nn.Linear(hidden, d)
        self.act = nn.GELU() if activation == "gelu" else nn.ReLU()
        nn.init.normal_(self.w2.weight, std=w2_std)
        nn.init.zeros_(self.w2.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.w2(self.act(self.w1(self.ln(h))))


class Layered(nn.Module):
    """embed -> blocks -> head. Subclasses build embed and blocks, then call make_head (init order = RNG order)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.residual_add = cfg.residual_add
        self.L = cfg.L
        self.hidden = max(1, round(cfg.mlp_ratio * cfg.d))
        self.h_shape: tuple[int, ...] = (cfg.d,)

    def make_head(self, cfg: ModelConfig, n_classes: int) -> None:
        self.out_ln = nn.LayerNorm(cfg.d) if cfg.out_ln else nn.Identity()
        self.readout = nn.Linear(cfg.d, n_classes)

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
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int):
        super().__init__(cfg)
        self.embed = nn.Linear(math.prod(in_shape), cfg.d)
        self.blocks = nn.ModuleList(Block(cfg.d, self.hidden, cfg.activation, cfg.w2_std) for _ in range(cfg.L))
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

    def __init__(self, d: int, hidden: int, heads: int, activation: str, w2_std: float):
        super().__init__()
        self.heads = heads
        self.ln = nn.LayerNorm(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.mlp = Block(d, hidden, activation, w2_std)  # includes LN2
        nn.init.normal_(self.proj.weight, std=w2_std)
        nn.init.zeros_(self.proj.bias)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        q, k, v = self.qkv(self.ln(h)).view(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = self.proj(F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(n, t, d))
        return a + self.mlp(h + a)


class ViTMini(Layered):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int):
        super().__init__(cfg)
        shape = image_shape(cfg.arch, in_shape)
        if shape[1] % cfg.patch_size or shape[2] % cfg.patch_size:
            raise DataError(f"patch_size: {cfg.patch_size} does not divide the {shape[1]}x{shape[2]} images")
        self.embed = PatchEmbed(shape, cfg.d, cfg.patch_size)
        self.blocks = nn.ModuleList(AttentionBlock(cfg.d, self.hidden, cfg.heads, cfg.activation, cfg.w2_std)
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

    def __init__(self, d: int, hidden: int, activation: str, w2_std: float):
        super().__init__(d, hidden, activation, w2_std)
        self.dw = nn.Conv2d(d, d, 3, padding=1, groups=d)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        z = self.dw(self.ln(h).permute(0, 3, 1, 2)).permute(0, 2, 3, 1)
        return self.w2(self.act(self.w1(z)))


class SmallCNN(Layered):
    def __init__(self, cfg: ModelConfig, in_shape: tuple[int, ...], n_classes: int):
        super().__init__(cfg)
        shape = image_shape(cfg.arch, in_shape)
        self.embed = ConvStem(shape, cfg.d)
        self.blocks = nn.ModuleList(ConvBlock(cfg.d, self.hidden, cfg.activation, cfg.w2_std) for _ in range(cfg.L))
        self.h_shape = ((shape[1] + 1) // 2, (shape[2] + 1) // 2, cfg.d)
        self.make_head(cfg, n_classes)


ARCHITECTURES = {"resmlp": ResMLP, "vit_mini": ViTMini, "small_cnn": SmallCNN}


def build_model(cfg: ModelConfig, in_shape: tuple[int, ...] | int, n_classes: int) -> Layered:
    shape = (in_shape,) if isinstance(in_shape, int) else tuple(in_shape)
    return ARCHITECTURES[cfg.arch](cfg, shape, n_classes)
