"""The conditioning code s of learned credit nets (s_type), shared by the rules that use one."""

import torch
from torch import nn

from raycredit.rules.base import output_error

H_L_PROJECTION = 32  # width of the fixed random projection of h_L in the *_hL codes


class Conditioning(nn.Module):
    """s from the terminal state: eT = softmax(z) - onehot(y); deltaL = dCE/dh_L; *_hL appends P h_L."""

    def __init__(self, s_type: str, n_classes: int, d: int, generator: torch.Generator):
        super().__init__()
        self.s_type, self.n_classes = s_type, n_classes
        base = n_classes if s_type.startswith("eT") else d
        self.dim = base + (H_L_PROJECTION if s_type.endswith("_hL") else 0)
        self.register_buffer("P", torch.randn(d, H_L_PROJECTION, generator=generator) / d**0.5)

    def forward(self, rule, model: nn.Module, hs: list[torch.Tensor], logits: torch.Tensor, y: torch.Tensor
                ) -> torch.Tensor:
        """The code of a batch; `rule` (the owner) supplies dCE/dh_L."""
        if self.s_type.startswith("eT"):
            s = output_error(logits, y)
        else:
            s = rule.output_local_grad(model, hs[-1], y)
        if self.s_type.endswith("_hL"):
            s = torch.cat([s, hs[-1] @ self.P], -1)
        return s.detach()


def with_time(h: torch.Tensor, l: int, L: int, s: torch.Tensor) -> torch.Tensor:
    """Input row of a credit net: [h_l, t_l = l / L, s]."""
    return torch.cat([h, torch.full_like(h[:, :1], l / L), s], -1)
