"""WIRE: Gabor wavelet layers (Saragadam et al. 2023).

Real form: ``cos(w0 z) exp(-(s0 z)^2)``.  Complex form: ``exp(i w0 z - |s0 z|^2)`` with complex
weights after the first layer; a model built from it reads out the real part.
"""
from __future__ import annotations

import torch
from torch import nn


def real_gabor(z: torch.Tensor, w0: float, s0: float) -> torch.Tensor:
    return torch.cos(w0 * z) * torch.exp(-(s0 * z) ** 2)


def complex_gabor(z: torch.Tensor, w0: float, s0: float) -> torch.Tensor:
    return torch.exp(1j * w0 * z - (s0 * z).abs().square())


class RealGaborLayer(nn.Module):
    def __init__(self, in_features: int, out_features: int, w0: float = 20.0, s0: float = 10.0,
                 bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.w0, self.s0 = float(w0), float(s0)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()  # WIRE keeps PyTorch's default init

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return real_gabor(self.linear(x), self.w0, self.s0)

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, w0={self.w0}, s0={self.s0}"


class ComplexGaborLayer(nn.Module):
    """Complex Gabor layer.  The first layer takes real coordinates with real weights; later layers
    take complex features with complex weights (``torch.cfloat``)."""

    def __init__(self, in_features: int, out_features: int, w0: float = 20.0, s0: float = 10.0,
                 is_first: bool = False, bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.w0, self.s0, self.is_first = float(w0), float(s0), bool(is_first)
        real = dtype or torch.get_default_dtype()
        cdtype = real if is_first else (torch.complex128 if real == torch.float64 else torch.complex64)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=cdtype)

    def reset_parameters(self) -> None:
        self.linear.reset_parameters()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.is_first and not x.is_complex():
            x = x.to(self.linear.weight.dtype)
        return complex_gabor(self.linear(x), self.w0, self.s0)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, w0={self.w0}, "
                f"s0={self.s0}, is_first={self.is_first}")
