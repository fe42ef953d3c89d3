"""ReLinear training of quadratic networks: parameter groups, weight shrinkage, ReZero.

* ReLinear-sg ("shrink the gradients"): the g and b terms of every quadratic layer get their own,
  smaller learning rates (:func:`relinear_groups`).
* ReLinear-sw ("shrink the weights"): after every optimizer step the quadratic weights are pulled
  toward their linear reference (:class:`ShrinkQuadratic`): ``w_g, w_b, c -> 0`` and ``b_g -> 1``.
* Regular training: one learning rate for everything (``relinear_groups(model, lr, lr, lr)``, or
  simply ``model.parameters()``).
* ReZero residual scaling ``x + alpha * F(x)``, ``alpha`` initialised to 0 (:class:`ReZero`).

Groups are built by walking the modules and testing ``isinstance``, never by matching names.
"""
from __future__ import annotations

import torch
from torch import nn

from inr.layers.quadratic import QuadraticConv2d, QuadraticLinear, quadratic_terms
from inr.errors import InputError

QUADRATIC_TYPES = (QuadraticLinear, QuadraticConv2d)


def quadratic_layers(model: nn.Module) -> list[nn.Module]:
    """Every quadratic layer in ``model`` (module order)."""
    return [m for m in model.modules() if isinstance(m, QUADRATIC_TYPES)]


def _split(model: nn.Module) -> dict[str, list[torch.Tensor]]:
    parts: dict[str, list] = {"r": [], "g": [], "b": [], "other": []}
    owned: set[int] = set()
    for layer in quadratic_layers(model):
        for role, sub in quadratic_terms(layer).items():
            if sub is None:
                continue
            for p in sub.parameters():
                if id(p) not in owned:
                    owned.add(id(p))
                    parts[role].append(p)
    seen = set(owned)
    for p in model.parameters():  # model.parameters() de-duplicates shared tensors itself
        if id(p) not in seen:
            seen.add(id(p))
            parts["other"].append(p)
    return parts


def relinear_groups(model: nn.Module, lr: float, lr_g: float, lr_b: float, weight_decay: float = 0.0,
                    quad_weight_decay: float = 0.0, trainable_only: bool = True) -> list[dict]:
    """Optimizer parameter groups for ReLinear-sg.

    Returns up to four groups, each a dict with keys ``name`` (``"r"``, ``"g"``, ``"b"``, ``"other"``),
    ``params``, ``lr`` and ``weight_decay``:

    * ``r``: weights and biases of the r term of every quadratic layer, learning rate ``lr``;
    * ``g``: ``w_g`` and ``b_g``, learning rate ``lr_g``;
    * ``b``: ``w_b`` and ``c``, learning rate ``lr_b``;
    * ``other``: every other parameter of ``model`` (conventional layers, norms, ReZero's alpha), ``lr``.

    ``weight_decay`` applies to ``r`` and ``other``; the g and b groups get ``quad_weight_decay``
    (default 0), since plain decay would pull ``b_g`` toward 0 instead of its reference 1; use
    :class:`ShrinkQuadratic` to shrink quadratic terms.  Empty groups are left out (PyTorch rejects
    them).  Passing ``lr_g = lr_b = lr`` gives regular training with the same grouping.
    """
    for name, v in (("lr", lr), ("lr_g", lr_g), ("lr_b", lr_b)):
        if not v >= 0:
            raise InputError(f"{name} must be >= 0, got {v}")
    parts = _split(model)
    spec = {"r": (lr, weight_decay), "g": (lr_g, quad_weight_decay), "b": (lr_b, quad_weight_decay),
            "other": (lr, weight_decay)}
    groups = []
    for name, (glr, wd) in spec.items():
        params = [p for p in parts[name] if p.requires_grad or not trainable_only]
        if params:
            groups.append({"name": name, "params": params, "lr": float(glr), "weight_decay": float(wd)})
    return groups


class ShrinkQuadratic:
    """ReLinear-sw: shrink the quadratic terms toward the linear reference after each step.

    Call it after ``optimizer.step()`` (e.g. ``fit(..., post_step=ShrinkQuadratic(model, alpha=1e-4))``).
    With ``d = p - ref`` (``ref = 1`` for ``b_g``, 0 for ``w_g``, ``w_b`` and ``c``):

    * L1 (``alpha``): the proximal step of ``alpha * |d|``: ``d <- sign(d) * max(|d| - alpha, 0)``;
    * L2 (``beta``): the decay step of ``beta / 2 * d^2``: ``d <- (1 - beta) * d``.

    ``alpha`` and ``beta`` are per-step amounts (a learning rate times a penalty weight).  The r term
    and non-quadratic parameters are never touched.
    """

    def __init__(self, model: nn.Module, alpha: float = 0.0, beta: float = 0.0):
        if alpha < 0 or not 0 <= beta < 1:
            raise InputError(f"need alpha >= 0 and 0 <= beta < 1, got alpha={alpha}, beta={beta}")
        self.alpha, self.beta = float(alpha), float(beta)
        self.targets: list[tuple[torch.Tensor, float]] = []
        for layer in quadratic_layers(model):
            t = quadratic_terms(layer)
            if t["g"] is not None:
                self.targets += [(t["g"].weight, 0.0), (t["g"].bias, 1.0)]
            self.targets.append((t["b"].weight, 0.0))
            if t["b"].bias is not None:
                self.targets.append((t["b"].bias, 0.0))

    @torch.no_grad()
    def __call__(self, step: int | None = None) -> None:
        for p, ref in self.targets:
            d = p - ref if ref else p.clone()
            if self.beta:
                d.mul_(1.0 - self.beta)
            if self.alpha:
                d = d.sign() * (d.abs() - self.alpha).clamp_min(0.0)
            p.copy_(d + ref if ref else d)

    def __repr__(self) -> str:
        return f"ShrinkQuadratic(alpha={self.alpha:g}, beta={self.beta:g}, tensors={len(self.targets)})"


class ReZero(nn.Module):
    """``x + alpha * fn(x)`` with a learnable scalar ``alpha`` initialised to 0 (Bachlechner et al.)."""

    def __init__(self, fn: nn.Module, device=None, dtype=None):
        super().__init__()
        self.fn = fn
        self.alpha = nn.Parameter(torch.zeros((), device=device, dtype=dtype))

    def reset_parameters(self) -> None:
        with torch.no_grad():
            self.alpha.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.alpha * self.fn(x)
