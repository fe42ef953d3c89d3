"""Boundary-value problems (docs/methods.md section 5).

A problem is ``time * u_t + sign * Laplace(u) + reaction * u = f`` on a box (``bounds``: one (lo, hi) per
axis; default the unit cube [0, 1]^dim) with Dirichlet values ``g`` on its boundary; a time-dependent
problem (``time_dependent``, the heat equation) has one more input, t in [0, T], the last axis, an initial
value ``u0`` at t = 0 and the Laplacian over the space axes only.  One class holds the pieces a solver
needs: a domain and boundary sampler, the source ``f``, the boundary (and initial) values, optionally the
exact solution ``u*`` (``has_exact``), and a residual scale (the residual is divided by it so the loss does
not grow like the square of the highest frequency).

Built-in problems with exact solutions: ``poisson2d`` and ``multiscale1d``.  Problems written down by a
user (Poisson, Helmholtz, heat; expressions or callables) are :class:`pde.equations.BoxProblem`.
New problems: subclass :class:`Problem`, then ``register("name", factory)``; ``get("name", n=...)``
builds one.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from inr.errors import InputError


class Problem:
    """``time * u_t + sign * Laplace(u) + reaction * u = f`` on a box, ``u = g`` on the boundary.

    Subclasses set ``dim`` (space dimensions), ``sign`` (-1 for ``-Laplace(u) = f``, +1 for ``u'' = f``),
    ``residual_scale`` and optionally ``bounds``, ``reaction`` (Helmholtz: -k^2), ``time_dependent`` (then
    ``time`` = 1 and the last input is t), and implement :meth:`source` and either :meth:`exact` or
    :meth:`boundary_values` (and :meth:`initial_values`).  The boundary and initial values default to the
    exact solution there.  Without :meth:`exact` the solver measures the error against a finite-difference
    reference (:mod:`pde.reference`).
    """

    name = "problem"
    dim = 1
    sign = 1.0
    reaction = 0.0          # coefficient of u in the operator (Helmholtz -Laplace(u) - k^2 u: sign -1, reaction -k^2)
    time_dependent = False  # heat: u_t + sign Laplace(u) = f with sign = -kappa, t the last input in [0, T]
    time = 1.0              # coefficient of u_t (time-dependent problems)
    bounds: tuple | None = None   # ((lo, hi), ...) per input axis (space, then time); None: [0, 1] each
    residual_scale = 1.0
    frequency = 1    # largest n with sin(n pi x) in the solution; sets the models' default frequencies

    @property
    def n_inputs(self) -> int:
        """The network's input count: the space dimensions, plus one for time."""
        return self.dim + (1 if self.time_dependent else 0)

    @property
    def box(self) -> tuple:
        """((lo, hi), ...) per input axis (floats)."""
        return tuple((float(a), float(b)) for a, b in self.bounds) if self.bounds else ((0.0, 1.0),) * self.n_inputs

    @property
    def has_exact(self) -> bool:
        """Whether :meth:`exact` is implemented (else the error is measured against a reference)."""
        return type(self).exact is not Problem.exact

    def lo_hi(self, like: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        b = torch.tensor(self.box, dtype=like.dtype, device=like.device)
        return b[:, 0], b[:, 1]

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """Problem coordinates -> [0, 1] per axis."""
        lo, hi = self.lo_hi(x)
        return (x - lo) / (hi - lo)

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """u*(x) for x of shape (N, n_inputs); returns (N, 1)."""
        raise NotImplementedError(f"problem {self.name!r} has no exact solution")

    def initial_values(self, x: torch.Tensor) -> torch.Tensor:
        """u0 at points (N, n_inputs) with t = 0 (time-dependent problems); default the exact solution."""
        return self.exact(x)

    def source(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), shape (N, 1)."""
        raise NotImplementedError

    def boundary_values(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) on boundary points (N, dim); shape (N, 1).  Must be differentiable in x (the exact-
        boundary lift evaluates it on the boundary projections of interior points)."""
        return self.exact(x)

    def _scale(self, u: torch.Tensor) -> torch.Tensor:
        """[0, 1] per axis -> problem coordinates (the identity on the unit cube, bit for bit)."""
        if self.bounds is None:
            return u
        b = torch.tensor(self.box, dtype=torch.float64)
        return (b[:, 0] + u.double() * (b[:, 1] - b[:, 0])).to(u.dtype)

    def sample_interior(self, n: int, generator: torch.Generator | None = None, device=None,
                        dtype=torch.float32) -> torch.Tensor:
        """n points uniform in the open box (space x time), shape (n, n_inputs)."""
        return self._scale(torch.rand(n, self.n_inputs, generator=generator, dtype=dtype)).to(device)

    def sample_boundary(self, n: int, generator: torch.Generator | None = None, device=None,
                        dtype=torch.float32) -> torch.Tensor:
        """n points uniform on the boundary (every face equally likely; for a time-dependent problem the
        space faces and the initial face t = 0), shape (n, n_inputs).

        In 1-D the boundary is the two end points; they alternate so both are always present."""
        if self.n_inputs == 1:
            return self._scale((torch.arange(n) % 2).to(dtype).unsqueeze(1)).to(device)
        x = torch.rand(n, self.n_inputs, generator=generator, dtype=dtype)
        faces = 2 * self.dim + (1 if self.time_dependent else 0)
        face = torch.randint(0, faces, (n,), generator=generator)
        rows = torch.arange(n)
        x[rows, torch.clamp(face // 2, max=self.n_inputs - 1)] = torch.where(face < 2 * self.dim, face % 2, 0).to(dtype)
        return self._scale(x).to(device)

    def boundary_data(self, x: torch.Tensor) -> torch.Tensor:
        """The Dirichlet data at boundary points x: :meth:`initial_values` on the initial face t = 0 of a
        time-dependent problem (where no space face holds the point), else :meth:`boundary_values`."""
        if not self.time_dependent:
            return self.boundary_values(x)
        lo, hi = self.lo_hi(x)
        xs = x[:, :self.dim]
        on_space = ((xs == lo[:self.dim]) | (xs == hi[:self.dim])).any(1, keepdim=True)
        if bool(on_space.all()):
            return self.boundary_values(x)
        if not bool(on_space.any()):
            return self.initial_values(x)
        return torch.where(on_space, self.boundary_values(x), self.initial_values(x))

    def describe(self) -> dict:
        d = {"name": self.name, "dim": self.dim, "sign": self.sign, "residual_scale": self.residual_scale,
             "frequency": self.frequency}
        if self.bounds is not None:
            d["bounds"] = [list(b) for b in self.box]
        if self.reaction:
            d["reaction"] = self.reaction
        if self.time_dependent:
            d["time_dependent"] = True
        return d


class Poisson2D(Problem):
    """``-Laplace(u) = f`` on [0, 1]^2, u = 0 on the boundary, ``u* = sin(n pi x) sin(n pi y)``,
    so ``f = 2 (n pi)^2 u*``.  The residual is divided by ``(n pi)^2``: then the scaled source is
    ``2 u*``, of size 1 for every n."""

    name = "poisson2d"
    dim = 2
    sign = -1.0
    zero_boundary = True

    def __init__(self, n: int = 1):
        if not (isinstance(n, int) or float(n).is_integer()) or n <= 0:
            raise InputError(f"--n must be a positive integer (the solution's frequency), got {n!r}")
        self.n = self.frequency = int(n)
        self.residual_scale = (self.n * math.pi) ** 2

    def exact(self, x):
        k = self.n * math.pi
        return (torch.sin(k * x[:, 0]) * torch.sin(k * x[:, 1])).unsqueeze(1)

    def source(self, x):
        return 2.0 * (self.n * math.pi) ** 2 * self.exact(x)

    def boundary_values(self, x):
        return torch.zeros(x.shape[0], 1, dtype=x.dtype, device=x.device)

    def describe(self):
        return {**super().describe(), "n": self.n}


class MultiScale1D(Problem):
    """``u'' = f`` on [0, 1] with ``u* = sin(2 pi x) + 0.1 sin(50 pi x)`` (Wang, Wang & Perdikaris
    2021); f and the boundary values come from u*.  The residual is divided by the bound
    ``(2 pi)^2 + 0.1 (50 pi)^2`` of |f|.  ``n`` is accepted and ignored (the frequencies are fixed)."""

    name = "multiscale1d"
    dim = 1
    sign = 1.0
    residual_scale = (2 * math.pi) ** 2 + 0.1 * (50 * math.pi) ** 2
    frequency = 50

    def __init__(self, n: int = 1):
        if n is not None and (not float(n).is_integer() or n <= 0):
            raise InputError(f"--n must be a positive integer, got {n!r}")

    def exact(self, x):
        t = x[:, :1]
        return torch.sin(2 * math.pi * t) + 0.1 * torch.sin(50 * math.pi * t)

    def source(self, x):
        t = x[:, :1]
        return -(2 * math.pi) ** 2 * torch.sin(2 * math.pi * t) - 0.1 * (50 * math.pi) ** 2 * torch.sin(50 * math.pi * t)


_PROBLEMS: dict[str, Callable[..., Problem]] = {"poisson2d": Poisson2D, "multiscale1d": MultiScale1D}
PROBLEMS = tuple(_PROBLEMS)


def register(name: str, factory: Callable[..., Problem]) -> None:
    """Add a problem: ``factory(n=...) -> Problem``."""
    global PROBLEMS
    _PROBLEMS[name] = factory
    PROBLEMS = tuple(_PROBLEMS)


def get(name: str, n: int = 1) -> Problem:
    """Build the problem ``name`` (one of :data:`PROBLEMS`) at frequency ``n``."""
    if name not in _PROBLEMS:
        raise InputError(f"unknown problem {name!r}; choose one of: {', '.join(_PROBLEMS)}")
    return _PROBLEMS[name](n=n)
