"""Gaussian-activated layer ``exp(-(s (W x + b))^2)`` (Ramasinghe & Lucey 2022; WIRE's baseline)."""
from __future__ import annotations

import torch
from torch import nn


def gauss(z: torch.Tensor, scale: float) -> torch.Tensor:
    return torch.exp(-(scale * z) ** 2)


class GaussLayer(nn.Module):
    """Linear map followed by a Gaussian bump; initialisation is PyTorch's default linear init,
    as in the WIRE reference implementation."""

    def __init__(self, in_features: int, out_features: int, scale: float = 10.0, bias: bool = True,
                 device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features, self.scale = in_features, out_features, float(scale)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return gauss(self.linear(x), self.scale)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, scale={self.scale}"
