"""Models for the PDE solver: the ``inr`` registry plus two PINN baselines.

- ``mlp-tanh``: the classic PINN network (tanh hidden layers, Xavier-normal init), registered in
  :mod:`inr.models` when :mod:`pde` is imported, so ``inr.models.build("mlp-tanh", ...)`` works.
- ``kan``: a Kolmogorov-Arnold network from the optional ``pykan`` package (see :mod:`pde.kan`).

:func:`build` takes a parameter budget for every name and applies the per-model PDE defaults of
:func:`pde_defaults` (frequencies scaled with the problem's n) for options the caller leaves out.
"""
from __future__ import annotations


import torch
from torch import nn

from inr import models as registry
from inr.spec import Hyper, ModelSpec, TaskDefaults

from . import kan as kan_mod


def _mlp_tanh(in_features, out_features, hidden=64, hidden_layers=3, device=None, dtype=None):
    """``hidden_layers + 1`` tanh layers of width ``hidden`` (as SIREN counts them), linear head."""
    fk = {"device": device, "dtype": dtype}
    layers, n = [], in_features
    for _ in range(hidden_layers + 1):
        lin = nn.Linear(n, hidden, **fk)
        layers += [lin, nn.Tanh()]
        n = hidden
    head = nn.Linear(hidden, out_features, **fk)
    with torch.no_grad():  # Glorot init, the PINN standard
        for m in [*layers, head]:
            if isinstance(m, nn.Linear):
                nn.init.xavier_normal_(m.weight)
                m.bias.zero_()
    return nn.Sequential(*layers), head, False


registry.register(ModelSpec(
    "mlp-tanh", _mlp_tanh, "hidden",
    (Hyper("hidden", int, 64, "hidden width; overrides --params", 1, 1 << 16),
     Hyper("hidden_layers", int, 3, "hidden layers after the first", 0, 64)),
    {"pde": TaskDefaults(lr=2e-3, cpu_batch=None, hyper={"hidden_layers": 3})},
    "the classic PINN network: tanh layers, Glorot init"))

registry.register(ModelSpec(
    "kan", None, "hidden",   # built by pde.kan (pykan), not by inr.models.build
    (Hyper("hidden", int, 16, "hidden width; overrides --params", 1, 4096),
     Hyper("grid", int, 10, "spline grid intervals", 1, 1000),
     Hyper("k", int, 3, "spline order", 1, 10)),
    {"pde": TaskDefaults(lr=1e-2, cpu_batch=None)},
    "Kolmogorov-Arnold network (optional pykan)"))

MODELS = tuple(m for m in registry.MODELS if m != "wire") + ("mlp-tanh", "kan")


def pde_defaults(name: str, n: int, dim: int) -> dict:
    """The hyper-parameters the family's spec sets for a PDE whose solution oscillates like sin(n pi x)
    (``spec(name).defaults("pde", n=n, dim=dim)``; the sweeps behind them are noted in :mod:`inr.models`)."""
    return registry.spec(name).defaults("pde", n=n, dim=dim)


def build(name: str, in_features: int, out_features: int = 1, *, params: int | None = None, device=None,
          dtype=None, **hyper) -> nn.Module:
    """Build ``name`` (registry model, ``mlp-tanh`` or ``kan``) at a parameter budget or explicit width."""
    if name == "kan":
        return kan_mod.build(in_features, out_features, params=params, device=device, dtype=dtype, **hyper)
    return registry.build(name, in_features, out_features, params=params, device=device, dtype=dtype, **hyper)


def count_params(model: nn.Module) -> int:
    """Trainable real parameters (KAN: spline coefficients and scales only; its frozen buffers don't count)."""
    return registry.count_params(model)
