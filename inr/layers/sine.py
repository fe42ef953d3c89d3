"""Periodic layers: SIREN (Sitzmann et al. 2020) and SPDER (Shah & Sitawarin 2023).

Both compute ``act(z)`` with ``z = w0 * (W x + b)``.  SIREN uses ``sin``; SPDER damps it with
``sqrt(|z|)`` (images) or ``arctan(z)`` (audio).
"""
from __future__ import annotations

import math

import torch
from torch import nn
from ..errors import InputError

SQRT_FLOOR = 1e-4  # keeps d/dz sqrt(|z|) finite at z = 0


def sine(z: torch.Tensor) -> torch.Tensor:
    return torch.sin(z)


def spder_sqrt(z: torch.Tensor) -> torch.Tensor:
    """SPDER image activation ``sin(z) * sqrt(max(|z|, 1e-4))``."""
    return torch.sin(z) * torch.sqrt(z.abs().clamp_min(SQRT_FLOOR))


def spder_atan(z: torch.Tensor) -> torch.Tensor:
    """SPDER audio activation ``sin(z) * arctan(z)``."""
    return torch.sin(z) * torch.atan(z)


ACTIVATIONS = {"sin": sine, "spder": spder_sqrt, "spder-atan": spder_atan}


def sqrt_envelope_jet(z: torch.Tensor):
    """sqrt(max(|z|, floor)) and its first two derivatives; both vanish where the floor holds (as autograd)."""
    a = z.abs()
    r = a.clamp_min(SQRT_FLOOR).sqrt()
    live = a > SQRT_FLOOR
    zero = torch.zeros_like(z)
    dr = torch.where(live, 0.5 * torch.sign(z) / r, zero)
    ddr = torch.where(live, -0.25 / (r * r * r), zero)
    return r, dr, ddr


def atan_envelope_jet(z: torch.Tensor):
    """arctan(z) and its first two derivatives."""
    q = 1.0 / (1.0 + z * z)
    return torch.atan(z), q, -2.0 * z * q * q


def activation_jet(name: str, z: torch.Tensor):
    """(sigma, sigma', sigma'') of a periodic activation at ``z``: the value and its first two derivatives
    (forward-mode Laplacians, :mod:`pde.forward`; LRNN components, :meth:`LRNNLayer.component_jet`)."""
    s, c = torch.sin(z), torch.cos(z)
    if name == "sin":
        return s, c, -s
    r, dr, ddr = sqrt_envelope_jet(z) if name == "spder" else atan_envelope_jet(z)
    # (sin r)'' = -sin r + 2 cos r' + sin r''
    return s * r, c * r + s * dr, (ddr - r) * s + 2.0 * c * dr


def get_activation(name: str):
    try:
        return ACTIVATIONS[name]
    except KeyError:
        raise InputError(f"unknown periodic activation {name!r}; expected one of {sorted(ACTIVATIONS)}") from None


class SineLayer(nn.Module):
    """``act(w0 * (W x + b))`` with SIREN's initialisation.

    First layer: W ~ U(-1/n_in, 1/n_in).  Later layers: W ~ U(-sqrt(6/n_in)/w0, +sqrt(6/n_in)/w0),
    so that ``w0 * W x`` has unit-scale pre-activations whatever w0 is.
    """

    def __init__(self, in_features: int, out_features: int, w0: float = 30.0, is_first: bool = False,
                 activation: str = "sin", bias: bool = True, device=None, dtype=None):
        super().__init__()
        self.in_features, self.out_features = in_features, out_features
        self.w0, self.is_first, self.activation = float(w0), bool(is_first), activation
        self._act = get_activation(activation)
        self.linear = nn.Linear(in_features, out_features, bias=bias, device=device, dtype=dtype)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        bound = 1.0 / self.in_features if self.is_first else math.sqrt(6.0 / self.in_features) / self.w0
        with torch.no_grad():
            self.linear.weight.uniform_(-bound, bound)
            if self.linear.bias is not None:
                # PyTorch's default bias range, as in the SIREN reference code
                b = 1.0 / math.sqrt(self.in_features)
                self.linear.bias.uniform_(-b, b)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._act(self.w0 * self.linear(x))

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, out_features={self.out_features}, w0={self.w0}, "
                f"is_first={self.is_first}, activation={self.activation!r}")
