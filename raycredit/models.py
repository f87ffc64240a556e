"""ResMLP: embedding -> L pre-LN residual blocks -> terminal LN -> readout.

Layer indices follow SPEC §2: h_0 is the embedding output, h_l (l = 1..L) the
output of block l. Block l (1-based) maps h_{l-1} to h_l through
f_l(h) = W2 act(W1 LN(h)). `head` is out_ln + readout, everything after h_L.
"""

from __future__ import annotations

import torch
from torch import nn

from raycredit.config import ModelConfig


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


class ResMLP(nn.Module):
    def __init__(self, cfg: ModelConfig, in_dim: int, n_classes: int):
        super().__init__()
        self.residual_add = cfg.residual_add
        self.L = cfg.L
        self.embed = nn.Linear(in_dim, cfg.d)
        hidden = max(1, round(cfg.mlp_ratio * cfg.d))
        self.blocks = nn.ModuleList(Block(cfg.d, hidden, cfg.activation, cfg.w2_std) for _ in range(cfg.L))
        self.out_ln = nn.LayerNorm(cfg.d) if cfg.out_ln else nn.Identity()
        self.readout = nn.Linear(cfg.d, n_classes)

    def f(self, l: int, h: torch.Tensor) -> torch.Tensor:
        """f_l(h) of block l (1-based)."""
        return self.blocks[l - 1](h)

    def step(self, l: int, h: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """h_l from h_{l-1} and f_l(h_{l-1})."""
        return h + f if self.residual_add else f

    def head(self, h: torch.Tensor) -> torch.Tensor:
        return self.readout(self.out_ln(h))

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


ARCHITECTURES = {"resmlp": ResMLP}


def build_model(cfg: ModelConfig, in_dim: int, n_classes: int) -> nn.Module:
    return ARCHITECTURES[cfg.arch](cfg, in_dim, n_classes)
