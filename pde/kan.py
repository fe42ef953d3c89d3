"""KAN baseline through the optional ``pykan`` package (``pip install mulneurons[kan]``).

``KAN(width=[in, w, out], grid=G, k=3)`` on inputs in [-1, 1] (pykan's default grid range).
Parameter counting follows docs/methods.md section 5: only the trainable spline coefficients and the two scales of
every edge count, ``(in + out) * w * (G + k + 2)``; the symbolic branch is disabled and its affine
parameters frozen, so ``count_params`` of the built model gives exactly that number.
pykan is made side-effect free: no checkpoints in ./model (``auto_save=False``), no activation
caching, and its habit of reseeding the global RNGs is undone (the caller's ``--seed`` rules).
"""
from __future__ import annotations

import random

import numpy as np
import torch
from torch import nn
from inr.errors import InputError


def available() -> bool:
    try:
        import kan  # noqa: F401
    except ImportError:
        return False
    return True


def edge_params(grid: int, k: int) -> int:
    """Trainable numbers per KAN edge: G + k spline coefficients, scale_base, scale_sp."""
    return grid + k + 2


def count(in_features: int, out_features: int, width: int, grid: int, k: int) -> int:
    return (in_features + out_features) * width * edge_params(grid, k)


def solve_width(in_features: int, out_features: int, params: int, grid: int, k: int) -> int:
    """The hidden width whose count is closest to ``params``."""
    return max(1, round(params / ((in_features + out_features) * edge_params(grid, k))))


class KANNet(nn.Module):
    """A two-layer pykan KAN behind the registry's interface (``.config``, ``forward(x)``)."""

    def __init__(self, in_features: int, out_features: int, hidden: int, grid: int = 10, k: int = 3,
                 device=None, dtype=None):
        super().__init__()
        try:
            from kan import KAN
        except ImportError:
            raise InputError("model 'kan' needs the optional pykan package: pip install 'mulneurons[kan]'") from None
        if min(hidden, grid, k) < 1:
            raise InputError(f"kan needs hidden, grid and k >= 1, got {hidden}, {grid}, {k}")
        states = torch.get_rng_state(), np.random.get_state(), random.getstate()
        seed = int(torch.randint(0, 2**31 - 1, ()).item())
        dev = torch.device(device) if device is not None else torch.device("cpu")
        self.kan = KAN(width=[in_features, hidden, out_features], grid=grid, k=k, seed=seed, auto_save=False,
                       symbolic_enabled=False, save_act=False, device=dev)
        torch.set_rng_state(states[0]); np.random.set_state(states[1]); random.setstate(states[2])
        for name, p in self.kan.named_parameters():
            if not name.startswith("act_fun."):
                p.requires_grad_(False)
        if dtype is not None:
            self.kan.to(dtype)
        self.config = {"name": "kan", "in_features": in_features, "out_features": out_features,
                       "hidden": hidden, "grid": grid, "k": k}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.kan(x)

    def extra_repr(self) -> str:
        c = self.config
        return f"width=[{c['in_features']}, {c['hidden']}, {c['out_features']}], grid={c['grid']}, k={c['k']}"


def build(in_features: int, out_features: int = 1, *, params: int | None = None, device=None, dtype=None,
          **hyper) -> KANNet:
    """A KAN of one hidden layer (``hidden``, ``grid``, ``k``: the spec's defaults, :mod:`pde.models`)."""
    from inr.models import spec

    s = spec("kan")
    hyper = {**s.hyper_defaults(), **s.check(hyper)}
    hidden, grid, k = hyper["hidden"], hyper["grid"], hyper["k"]
    if params is not None:
        if params < 1:
            raise InputError(f"params must be positive, got {params}")
        hidden = solve_width(in_features, out_features, params, grid, k)
    return KANNet(in_features, out_features, hidden, grid, k, device=device, dtype=dtype)
