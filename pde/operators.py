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


def laplacian(u: torch.Tensor, x: torch.Tensor, create_graph: bool = True, dims: int | None = None) -> torch.Tensor:
    """Sum of d^2u/dx_i^2 over the first ``dims`` coordinates (default all) per point, shape (N, 1); needs
    dims + 1 backward passes.

    ``create_graph=True`` keeps the graph so a loss built on the Laplacian can be trained."""
    g = gradient(u, x, create_graph=True)
    lap = torch.zeros_like(u)
    for i in range(x.shape[1] if dims is None else dims):
        (h,) = torch.autograd.grad(g[:, i].sum(), x, create_graph=create_graph, retain_graph=True)
        lap = lap + h[:, i:i + 1]
    return lap


def bubble(x: torch.Tensor) -> torch.Tensor:
    """``prod_i 4 x_i (1 - x_i)``: zero on the boundary of [0, 1]^d, 1 at the centre, shape (N, 1).

    The factor 4 per axis keeps the network's output at its natural O(1) scale inside the domain
    (without it, a 2-D network would have to output 16x larger values)."""
    return torch.prod(4.0 * x * (1.0 - x), dim=1, keepdim=True)


def distance_factor(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """The factor of the exact-boundary ansatz, zero where the Dirichlet data are prescribed, (N, 1):
    :func:`bubble` of the normalised space coordinates, times t / T for a time-dependent problem (zero on
    the initial face only)."""
    xi = problem.normalise(x) if problem.bounds is not None else x
    b = bubble(xi[:, :problem.dim])
    return b * xi[:, problem.dim:problem.dim + 1] if problem.time_dependent else b


def lift(problem: Problem, x: torch.Tensor) -> torch.Tensor:
    """A smooth function equal to the Dirichlet data on the boundary of the box, built from the data on the
    boundary alone (never from values inside, so a manufactured solution is not handed to the network).

    Transfinite (Coons) interpolation, ``P = I - prod_axes (I - P_axis)``, expanded over the non-empty sets S
    of axes: ``sum_S (-1)^(|S|+1) sum_corners (prod weights) g(x with the S coordinates on their faces)``.  A
    space axis interpolates linearly between its two faces; the time axis of a time-dependent problem extends
    the initial values u0 (t = 0) constantly in t.  1-D: the line through g at both ends; 2-D: the Coons
    patch ``sum_faces - sum_corners``; any dimension.  Returns zero without evaluating anything when the
    problem says its data vanish (``zero_boundary``)."""
    from itertools import combinations, product

    if getattr(problem, "zero_boundary", False):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    n_in = x.shape[1]
    lo, hi = problem.lo_hi(x) if problem.bounds is not None else (torch.zeros(n_in, dtype=x.dtype, device=x.device),
                                                                  torch.ones(n_in, dtype=x.dtype, device=x.device))
    xi = (x - lo) / (hi - lo)
    space = problem.dim
    total = torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)
    for size in range(1, n_in + 1):
        for axes in combinations(range(n_in), size):
            sides = [(0,) if a >= space else (0, 1) for a in axes]
            for corner in product(*sides):
                w = torch.ones(x.shape[0], 1, dtype=x.dtype, device=x.device)
                fixed = {}
                for a, c in zip(axes, corner):
                    if a < space:
                        w = w * (xi[:, a:a + 1] if c else 1.0 - xi[:, a:a + 1])
                    fixed[a] = float(hi[a] if c else lo[a])
                pts = torch.cat([torch.full_like(x[:, a:a + 1], fixed[a]) if a in fixed else x[:, a:a + 1]
                                 for a in range(n_in)], 1)
                on_space = any(a < space for a in axes)
                g = problem.boundary_values(pts) if (on_space or not problem.time_dependent) else problem.initial_values(pts)
                total = total + (1.0 if size % 2 else -1.0) * w * g
    return total


class Ansatz(torch.nn.Module):
    """The trial solution ``u(x)`` built from a coordinate network, in the problem's own coordinates.

    The network reads ``2 xi - 1`` with xi = (x - lo) / (hi - lo) per axis (the registry models are
    initialised for inputs in [-1, 1]).  ``boundary="exact"``: ``u = lift(x) + D(x) * net(2 xi - 1)``
    (:func:`lift`, :func:`distance_factor`) satisfies the boundary (and initial) values by construction.
    ``boundary="penalty"``: ``u = net(2 xi - 1)`` and the loss carries a boundary term.
    """

    def __init__(self, net: torch.nn.Module, problem: Problem, boundary: str = "exact"):
        super().__init__()
        if boundary not in ("exact", "penalty"):
            raise InputError(f"--boundary must be 'exact' or 'penalty', got {boundary!r}")
        self.net, self.problem, self.boundary = net, problem, boundary

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        xi = self.problem.normalise(x) if self.problem.bounds is not None else x
        y = self.net(2.0 * xi - 1.0)
        if self.boundary == "exact":
            y = lift(self.problem, x) + distance_factor(self.problem, x) * y
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
    """Scaled PDE residual ``(time * u_t + sign * Laplace(u) + reaction * u - f) / residual_scale`` at interior
    points, (N, 1); the Laplacian is over the space axes, u_t (time-dependent problems) by autograd through
    the value.

    ``laplacian``: ``"auto"``, ``"forward"`` (:mod:`pde.forward`) or ``"reverse"`` (autograd); see
    :func:`choose_laplacian`.  ``create_graph=False`` gives a residual without a graph (evaluation)."""
    mode = choose_laplacian(u_fn, laplacian)
    timed = getattr(problem, "time_dependent", False)
    reaction = getattr(problem, "reaction", 0.0)
    if mode == "forward":
        from .forward import jet

        if timed:
            with torch.enable_grad():
                xr = x.detach().requires_grad_(True)
                j = jet(u_fn, xr, dims=problem.dim)
                (g,) = torch.autograd.grad(j.v.sum(), xr, create_graph=create_graph)
                lap, u, ut = j.l, j.v, g[:, problem.dim:problem.dim + 1]
            if not create_graph:
                lap, u, ut = lap.detach(), u.detach(), ut.detach()
        else:
            with torch.set_grad_enabled(create_graph):
                j = jet(u_fn, x.detach())
            lap, u, ut = j.l, j.v, None
        r = problem.sign * lap - problem.source(x.detach())
        if reaction:
            r = r + reaction * u
        if ut is not None:
            r = r + problem.time * ut
        return r / problem.residual_scale
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        u = u_fn(x)
        dims = problem.dim if timed else None
        r = problem.sign * _reverse_laplacian(u, x, create_graph=create_graph, dims=dims) - problem.source(x)
        if reaction:
            r = r + reaction * u
        if timed:
            (g,) = torch.autograd.grad(u.sum(), x, create_graph=create_graph, retain_graph=True)
            r = r + problem.time * g[:, problem.dim:problem.dim + 1]
    return r / problem.residual_scale


_reverse_laplacian = laplacian
