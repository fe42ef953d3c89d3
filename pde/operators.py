"""Differential operators, and the exact-boundary ansatz.

Two ways to the Laplacian in :func:`residual` (``laplacian=``):

- ``"reverse"``: reverse-over-reverse autograd (``torch.autograd.grad(..., create_graph=True)``, d + 1
  backward passes, :func:`laplacian`).  It works for every model except the hash grid (whose backward
  is once-differentiable), including LRNN's memory-light custom autograd Function, which has a
  differentiable backward but no forward-mode rule (``torch.func.jvp`` would fail on it).
- ``"forward"``: :mod:`pde.forward` carries value, gradient and Laplacian through the network layer by
  layer, so one forward pass gives the residual and one ordinary backward pass trains it.  It covers every
  registry model that ``pde`` builds (and the :class:`Ansatz`), not KAN.
- ``"auto"`` (default): forward where every module has a rule and the measured training step
  (benchmarks/laplacian_cost.py) is not slower, else reverse; :func:`choose_laplacian`.
The functions assume the model acts on each point independently (true for every coordinate
network here: LayerNorm normalises over features, not over the batch), so the gradient of
``u.sum()`` with respect to the batch of points is the per-point gradient.
"""
from __future__ import annotations

from typing import Callable

import torch

from .problems import Problem
from inr.errors import InputError


def gradient(u: torch.Tensor, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """du/dx per point: u (N, 1) computed from x (N, d) with ``x.requires_grad``; returns (N, d)."""
    (g,) = torch.autograd.grad(u.sum(), x, create_graph=create_graph)
    return g


def laplacian(u: torch.Tensor, x: torch.Tensor, create_graph: bool = True) -> torch.Tensor:
    """Sum of d^2u/dx_i^2 per point, shape (N, 1); needs d + 1 backward passes.

    ``create_graph=True`` keeps the graph so a loss built on the Laplacian can be trained."""
    g = gradient(u, x, create_graph=True)
    lap = torch.zeros_like(u)
    for i in range(x.shape[1]):
        (h,) = torch.autograd.grad(g[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        lap = lap + h[:, i:i + 1]
    return lap


def bubble(x: torch.Tensor) -> torch.Tensor:
    """``prod_i 4 x_i (1 - x_i)``: zero on the boundary of [0, 1]^d, 1 at the centre, shape (N, 1).

    The factor 4 per axis keeps the network's output at its natural O(1) scale inside the domain
    (without it, a 2-D network would have to output 16x larger values)."""
    return torch.prod(4.0 * x * (1.0 - x), dim=1, keepdim=True)


def lift(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """A smooth function equal to the boundary values g on the boundary of [0, 1]^d (d = 1 or 2).

    1-D: linear interpolation of g(0), g(1).  2-D: the transfinite (Coons) interpolant
    ``sum_faces - sum_corners``, which matches any continuous g on all four edges.  Returns zero
    without evaluating g when the problem says its boundary values vanish."""
    if getattr(problem, "zero_boundary", False):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    g = problem.boundary_values
    if x.shape[1] == 1:
        zero, one = torch.zeros_like(x), torch.ones_like(x)
        return (1 - x) * g(zero) + x * g(one)
    if x.shape[1] != 2:
        raise InputError(f"exact boundary conditions support 1-D and 2-D problems, got dim {x.shape[1]}")
    X, Y = x[:, :1], x[:, 1:]
    z, o = torch.zeros_like(X), torch.ones_like(X)
    faces = ((1 - X) * g(torch.cat([z, Y], 1)) + X * g(torch.cat([o, Y], 1))
             + (1 - Y) * g(torch.cat([X, z], 1)) + Y * g(torch.cat([X, o], 1)))
    corner = lambda a, b: g(torch.tensor([[a, b]], dtype=x.dtype, device=x.device))
    corners = ((1 - X) * (1 - Y) * corner(0.0, 0.0) + X * (1 - Y) * corner(1.0, 0.0)
               + (1 - X) * Y * corner(0.0, 1.0) + X * Y * corner(1.0, 1.0))
    return faces - corners


class Ansatz(torch.nn.Module):
    """The trial solution ``u(x)`` built from a coordinate network.

    The network reads ``2 x - 1`` (the registry models are initialised for inputs in [-1, 1]).
    ``boundary="exact"``: ``u = lift(x) + bubble(x) * net(2x - 1)`` satisfies the boundary values by
    construction.  ``boundary="penalty"``: ``u = net(2x - 1)`` and the loss carries a boundary term.
    """

    def __init__(self, net: torch.nn.Module, problem: Problem, boundary: str = "exact"):
        super().__init__()
        if boundary not in ("exact", "penalty"):
            raise InputError(f"--boundary must be 'exact' or 'penalty', got {boundary!r}")
        self.net, self.problem, self.boundary = net, problem, boundary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.net(2.0 * x - 1.0)
        if self.boundary == "exact":
            y = lift(self.problem, x) + bubble(x) * y
        return y


LAPLACIAN_MODES = ("auto", "forward", "reverse")
# Models whose training step is slower with the forward Laplacian at the benchmarked budgets, point counts
# and one CPU thread (benchmarks/laplacian_cost.py; README "Forward Laplacian"): "auto" keeps reverse mode.
REVERSE_FASTER: frozenset = frozenset()


def _model_name(u_fn) -> str | None:
    net = getattr(u_fn, "net", u_fn)
    cfg = getattr(net, "config", None)
    return cfg.get("name") if isinstance(cfg, dict) else None


def choose_laplacian(u_fn, mode: str = "auto") -> str:
    """The Laplacian ``residual`` uses for ``u_fn`` (an :class:`Ansatz`, a registry model or any callable):
    ``"forward"`` or ``"reverse"``.  ``"forward"`` on a model without rules raises a ValueError naming the
    modules; ``"auto"`` picks forward when every module has a rule and the model is not in
    :data:`REVERSE_FASTER` (and always for the hash grid, which reverse mode cannot differentiate twice)."""
    from . import forward

    if mode not in LAPLACIAN_MODES:
        raise InputError(f"--laplacian must be one of {', '.join(LAPLACIAN_MODES)}, got {mode!r}")
    if mode == "reverse":
        return mode
    missing = forward.unsupported(u_fn)
    if mode == "forward":
        if missing:
            raise InputError(f"--laplacian forward: no forward rule for {', '.join(missing)}; use auto or reverse")
        return mode
    if missing:
        return "reverse"
    net = getattr(u_fn, "net", u_fn)
    if any(type(m).__name__ == "HashGridEncoding" for m in net.modules()):
        return "forward"
    return "reverse" if _model_name(u_fn) in REVERSE_FASTER else "forward"


def residual(u_fn: Callable[[torch.Tensor], torch.Tensor], problem: Problem, x: torch.Tensor,
             create_graph: bool = True, laplacian: str = "auto") -> torch.Tensor:
    """Scaled PDE residual ``(sign * Laplace(u) - f) / residual_scale`` at interior points, (N, 1).

    ``laplacian``: ``"auto"``, ``"forward"`` (:mod:`pde.forward`) or ``"reverse"`` (autograd); see
    :func:`choose_laplacian`.  ``create_graph=False`` gives a residual without a graph (evaluation)."""
    mode = choose_laplacian(u_fn, laplacian)
    if mode == "forward":
        from .forward import jet

        with torch.set_grad_enabled(create_graph):
            lap = jet(u_fn, x.detach()).l
        r = problem.sign * lap - problem.source(x.detach())
        return r / problem.residual_scale
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        u = u_fn(x)
        r = problem.sign * _reverse_laplacian(u, x, create_graph=create_graph) - problem.source(x)
    return r / problem.residual_scale


_reverse_laplacian = laplacian
