"""Quadratic neurons (Fan et al., "Quadratic neural networks ... ReLinear").

Full neuron:    ``(w_r.x + b_r) * (w_g.x + b_g) + w_b.(x*x) + c``
Compact neuron: ``(w_r.x + b_r) + w_b.(x*x) + c`` (no product term)

Each term is an ordinary sub-layer (``lin_r``/``lin_g``/``lin_b`` or ``conv_r``/``conv_g``/``conv_b``),
so a full layer has 3x and a compact layer 2x the parameters of a conventional layer of the same
shape.  No activation is applied inside the layer.

ReLinear initialisation (``relinear=True``): the r term gets PyTorch's default initialisation and
``w_g = 0, b_g = 1, w_b = 0, c = 0``, so the layer starts out *equal* to the conventional layer
``lin_r``.  With ``relinear=False`` all sub-layers get PyTorch's default initialisation.

``bias=False`` drops ``b_r`` and ``c``; ``b_g`` is always kept, because without it the product
term (and ReLinear's reference ``b_g = 1``) could not reproduce the conventional neuron.
"""
from __future__ import annotations

import torch
from torch import nn


def _relinear_(g: nn.Module, b: nn.Module) -> None:
    with torch.no_grad():
        if g is not None:
            g.weight.zero_()
            g.bias.fill_(1.0)
        b.weight.zero_()
        if b.bias is not None:
            b.bias.zero_()


class QuadraticLinear(nn.Module):
    """``lin_r(x) * lin_g(x) + lin_b(x*x)`` (full) or ``lin_r(x) + lin_b(x*x)`` (compact).

    Shapes as :class:`torch.nn.Linear`: ``(*, in_features) -> (*, out_features)``.
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, compact: bool = False,
                 relinear: bool = True, device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        self.in_features, self.out_features = in_features, out_features
        self.compact, self.relinear = bool(compact), bool(relinear)
        self.lin_r = nn.Linear(in_features, out_features, bias=bias, **fk)
        self.lin_g = None if compact else nn.Linear(in_features, out_features, bias=True, **fk)
        self.lin_b = nn.Linear(in_features, out_features, bias=bias, **fk)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.lin_r, self.lin_g, self.lin_b):
            if m is not None:
                m.reset_parameters()
        if self.relinear:
            _relinear_(self.lin_g, self.lin_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.lin_r(x)
        if self.lin_g is not None:
            r = r * self.lin_g(x)
        return r + self.lin_b(x * x)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, "
                f"bias={self.lin_r.bias is not None}, compact={self.compact}, relinear={self.relinear}")


class QuadraticConv2d(nn.Module):
    """``conv_r(x) * conv_g(x) + conv_b(x*x)`` (full) or ``conv_r(x) + conv_b(x*x)`` (compact).

    The three convolutions share kernel size, stride, padding, dilation and groups, so shapes are
    those of :class:`torch.nn.Conv2d`.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
                 bias: bool = True, compact: bool = False, relinear: bool = True, dilation=1, groups: int = 1,
                 device=None, dtype=None):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.compact, self.relinear = bool(compact), bool(relinear)

        def conv(with_bias):
            return nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding,
                             dilation=dilation, groups=groups, bias=with_bias, device=device, dtype=dtype)

        self.conv_r = conv(bias)
        self.conv_g = None if compact else conv(True)
        self.conv_b = conv(bias)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in (self.conv_r, self.conv_g, self.conv_b):
            if m is not None:
                m.reset_parameters()
        if self.relinear:
            _relinear_(self.conv_g, self.conv_b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.conv_r(x)
        if self.conv_g is not None:
            r = r * self.conv_g(x)
        return r + self.conv_b(x * x)

    def extra_repr(self) -> str:
        c = self.conv_r
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={c.kernel_size}, stride={c.stride}, "
             f"padding={c.padding}")
        if c.dilation != (1, 1):
            s += f", dilation={c.dilation}"
        if c.groups != 1:
            s += f", groups={c.groups}"
        return s + f", bias={c.bias is not None}, compact={self.compact}, relinear={self.relinear}"


def quadratic_terms(layer: nn.Module) -> dict:
    """The sub-layers of a quadratic layer by role: ``{"r": ..., "g": ... or None, "b": ...}``."""
    if isinstance(layer, QuadraticLinear):
        return {"r": layer.lin_r, "g": layer.lin_g, "b": layer.lin_b}
    if isinstance(layer, QuadraticConv2d):
        return {"r": layer.conv_r, "g": layer.conv_g, "b": layer.conv_b}
    raise TypeError(f"expected QuadraticLinear or QuadraticConv2d, got {type(layer).__name__}")
