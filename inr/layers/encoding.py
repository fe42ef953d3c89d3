"""Fourier / positional encoding of coordinates (Mildenhall et al. 2020; Tancik et al. 2020)."""
from __future__ import annotations

import math

import torch
from torch import nn
from ..errors import InputError


class PositionalEncoding(nn.Module):
    """``[x, sin(2^k pi x), cos(2^k pi x)]`` for k = 0..L-1, per coordinate.

    Output width: ``in_features * (include_input + 2 L)``.  The frequencies are a buffer."""

    def __init__(self, in_features: int, n_freqs: int = 10, include_input: bool = True, device=None, dtype=None):
        super().__init__()
        if n_freqs < 1:
            raise InputError(f"n_freqs must be >= 1, got {n_freqs}")
        self.in_features, self.n_freqs, self.include_input = in_features, int(n_freqs), bool(include_input)
        freqs = math.pi * 2.0 ** torch.arange(n_freqs, device=device, dtype=dtype or torch.get_default_dtype())
        self.register_buffer("freqs", freqs)

    @property
    def out_features(self) -> int:
        return self.in_features * (int(self.include_input) + 2 * self.n_freqs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xf = x[..., :, None] * self.freqs  # (..., d, L)
        parts = [torch.sin(xf).flatten(-2), torch.cos(xf).flatten(-2)]
        if self.include_input:
            parts.insert(0, x)
        return torch.cat(parts, dim=-1)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, n_freqs={self.n_freqs}, include_input={self.include_input}"
