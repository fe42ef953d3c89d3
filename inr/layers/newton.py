"""Newton residual block (Newton-ResNet: "Newton residual learning", Eq. (3) and Algorithm 1).

``x_{t+1} = phi(s(x) + f(x) + alpha * N2(N1(s(x)) * f(x)))``

* ``f(x) = BN(conv3x3(phi(BN(conv3x3(x)))))`` is the transformation path of ResNet's basic block;
* ``s(x)`` is the shortcut: the identity, or ResNet's 1x1 conv + BN when the shape changes (the paper
  leaves shape changes open; ``N1`` acts on ``s(x)`` so the element-wise product is defined, and on
  identity blocks ``s(x) = x`` exactly as in the paper);
* ``N1`` is ``x_proj`` layers of ``phi2(conv1x1(.))`` and ``N2`` is ``lin_proj`` layers of
  ``phi2(BN(conv1x1(.)))`` (Algorithm 1's normalisation projections, channel count kept);
* ``alpha`` is a learnable scalar; its initial value is not given in the paper (ours: ``alpha_init``).

With ``activation="none"`` every ``phi`` is the identity (the paper's "linear blocks" experiment).

The paper's parameter counts pin the projections down: ``x_proj = lin_proj = 1`` reproduces Table 1
(ReLU networks: [2, 2, 1, 1] 6.0M, [3, 3, 2, 2] 13.0M) and ``x_proj = 0, lin_proj = 1`` Table 2 (linear
networks: [1, 1, 1, 1] 5.3M, [2, 2, 2, 2] 11.9M, [3, 3, 3, 3] 18.5M), all with a CIFAR ResNet18 stem.
"""
from __future__ import annotations

import torch
from torch import nn
from ..errors import InputError

_PHI = {"relu": nn.ReLU, "none": nn.Identity, "identity": nn.Identity, "tanh": nn.Tanh}


def _act(name: str) -> nn.Module:
    if name not in _PHI:
        raise InputError(f"activation must be one of {sorted(_PHI)}, got {name!r}")
    return _PHI[name]()


class NewtonBlock(nn.Module):
    """Newton residual block: ``(N, in_channels, H, W) -> (N, out_channels, H/stride, W/stride)``.

    Args:
        x_proj: number of ``phi2(conv1x1)`` layers in ``N1`` (0: ``N1`` is the identity).
        lin_proj: number of ``phi2(BN(conv1x1))`` layers in ``N2`` (0: ``N2`` is the identity).
        activation: ``phi`` ("relu" or "none").  phi2: activation inside N1/N2 ("none", "relu", "tanh";
            the paper uses tanh on the second-order term against float16 overflow on ImageNet).
        alpha_init: initial ``alpha``; default 0 (the block starts as ResNet's basic block and learns how
            much second-order term to add; ``alpha`` gets a gradient from the first step).
        norm: "bn" or "none" (BatchNorm everywhere, or no normalisation at all).
    """

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, x_proj: int = 1, lin_proj: int = 1,
                 activation: str = "relu", phi2: str = "none", alpha_init: float = 0.0, norm: str = "bn",
                 device=None, dtype=None):
        super().__init__()
        fk = {"device": device, "dtype": dtype}
        if x_proj < 0 or lin_proj < 0:
            raise InputError(f"x_proj and lin_proj must be >= 0, got {x_proj}, {lin_proj}")
        if norm not in ("bn", "none"):
            raise InputError(f"norm must be 'bn' or 'none', got {norm!r}")

        def bn(c):
            return nn.BatchNorm2d(c, **fk) if norm == "bn" else nn.Identity()

        self.in_channels, self.out_channels, self.stride = in_channels, out_channels, stride
        self.activation, self.phi2_name, self.alpha_init = activation, phi2, float(alpha_init)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride, 1, bias=False, **fk)
        self.bn1 = bn(out_channels)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, 1, 1, bias=False, **fk)
        self.bn2 = bn(out_channels)
        self.phi = _act(activation)
        self.shortcut = nn.Identity()
        if stride != 1 or in_channels != out_channels:
            self.shortcut = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride, bias=False, **fk),
                                          bn(out_channels))
        self.n1 = nn.Sequential(*[nn.Sequential(nn.Conv2d(out_channels, out_channels, 1, bias=False, **fk),
                                                _act(phi2)) for _ in range(x_proj)])
        self.n2 = nn.Sequential(*[nn.Sequential(nn.Conv2d(out_channels, out_channels, 1, bias=False, **fk),
                                                bn(out_channels), _act(phi2)) for _ in range(lin_proj)])
        self.alpha = nn.Parameter(torch.empty((), **fk))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.fill_(self.alpha_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.bn2(self.conv2(self.phi(self.bn1(self.conv1(x)))))
        s = self.shortcut(x)
        return self.phi(s + f + self.alpha * self.n2(self.n1(s) * f))

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, stride={self.stride}, x_proj={len(self.n1)}, "
                f"lin_proj={len(self.n2)}, activation={self.activation}, phi2={self.phi2_name}")
