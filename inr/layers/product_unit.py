"""2-D product units (PURe: Li, Jaekel & Dellen, "Deep residual learning with product units").

A product unit raises each input of its receptive field to a learned power and multiplies:
``y(i, j) = prod_{m, n} x(i+m, j+n) ** w(m, n)``.  It is computed in the log domain,
``y = exp(conv(log(max(x, softplus(theta) + eps))))``, where the clamp keeps the logarithm real
and bounded for zero and negative inputs (``theta`` is a trainable scalar, initialised to 0).

Padding pads ``log x`` with zeros, i.e. the image with ones (the neutral element of a product).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.modules.utils import _pair
from ..errors import InputError


class ConvPU(nn.Module):
    """Convolutional product unit: ``(N, C_in, H, W) -> (N, C_out, H', W')`` with Conv2d's shape rules.

    Args:
        in_channels, out_channels, kernel_size, stride, padding, dilation, groups: as :class:`torch.nn.Conv2d`.
        bias: a bias in the log domain is a per-channel multiplicative constant; off by default because
            PURe follows every ConvPU with BatchNorm (and PURe18 = ResNet18 + 8 parameters needs it off).
        eps: the constant added to ``softplus(theta)`` so the threshold stays strictly positive.
        init_a: the ``a`` of ``kaiming_uniform_``.  The paper says "Kaiming uniform with a scaling factor
            of 5"; we read that as PyTorch's ``nn.Conv2d`` default ``a = sqrt(5)`` (bound ``1/sqrt(fan_in)``),
            which is the default here; pass ``init_a=5.0`` for the literal reading.

    The weight is held directly (this is not an ``nn.Conv2d`` subclass), so model-wide
    ``isinstance(m, nn.Conv2d)`` initialisation loops (ResNet's Kaiming-normal) leave it alone.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size, stride=1, padding=0, dilation=1,
                 groups: int = 1, bias: bool = False, eps: float = 1e-7, init_a: float = math.sqrt(5),
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        if in_channels % groups or out_channels % groups:
            raise InputError(f"in_channels ({in_channels}) and out_channels ({out_channels}) "
                             f"must be divisible by groups ({groups})")
        if not eps > 0:
            raise InputError(f"eps must be > 0, got {eps}")
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel_size, self.stride = _pair(kernel_size), _pair(stride)
        self.padding, self.dilation, self.groups = _pair(padding), _pair(dilation), groups
        self.eps, self.init_a = float(eps), float(init_a)
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, *self.kernel_size, **fk))
        self.bias = nn.Parameter(torch.empty(out_channels, **fk)) if bias else None
        self.theta = nn.Parameter(torch.empty((), **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=self.init_a)
        if self.bias is not None:
            fan_in = self.weight[0].numel()
            nn.init.uniform_(self.bias, -1 / math.sqrt(fan_in), 1 / math.sqrt(fan_in))
        with torch.no_grad():
            self.theta.zero_()

    def threshold(self) -> torch.Tensor:
        """The lower clamp ``softplus(theta) + eps`` applied to the input."""
        return F.softplus(self.theta) + self.eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = torch.log(torch.maximum(x, self.threshold().to(x.dtype)))
        y = F.conv2d(z, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        if torch.is_autocast_enabled(y.device.type):
            # Only the conv runs in low precision: exp would turn bf16 rounding of the exponent into
            # relative errors of the product (CUDA autocast does this by itself, CPU autocast does not).
            y = y.float()
        return torch.exp(y)

    def extra_repr(self) -> str:
        s = (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
             f"padding={self.padding}")
        if self.dilation != (1, 1):
            s += f", dilation={self.dilation}"
        if self.groups != 1:
            s += f", groups={self.groups}"
        return s + f", bias={self.bias is not None}, eps={self.eps:g}, init_a={self.init_a:.4g}"
