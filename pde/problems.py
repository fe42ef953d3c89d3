"""Boundary-value problems with exact solutions (docs/methods.md section 5).

A problem is ``sign * Laplace(u) = f`` on the unit cube [0, 1]^dim with Dirichlet values ``g`` on its
boundary.  One class holds the pieces a solver needs: a domain and boundary sampler, the source
``f``, the boundary values ``g``, the exact solution ``u*`` and a residual scale (the residual is
divided by it so the loss does not grow like the square of the highest frequency).

New problems: subclass :class:`Problem`, then ``register("name", factory)``; ``get("name", n=...)``
builds one.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from inr.errors import InputError


class Problem:
    """``sign * Laplace(u) = f`` on [0, 1]^dim, ``u = g`` on the boundary.

    Subclasses set ``dim``, ``sign`` (-1 for ``-Laplace(u) = f``, +1 for ``u'' = f``) and
    ``residual_scale`` and implement :meth:`exact` and :meth:`source`.  The boundary values default
    to the exact solution on the boundary.
    """

    name = "problem"
    dim = 1
    sign = 1.0
    residual_scale = 1.0
    frequency = 1    # largest n with sin(n pi x) in the solution; sets the models' default frequencies

    def exact(self, x: torch.Tensor) -> torch.Tensor:
        """u*(x) for x of shape (N, dim); returns (N, 1)."""
        raise NotImplementedError

    def source(self, x: torch.Tensor) -> torch.Tensor:
        """f(x), shape (N, 1)."""
        raise NotImplementedError

    def boundary_values(self, x: torch.Tensor) -> torch.Tensor:
        """g(x) on boundary points (N, dim); shape (N, 1).  Must be differentiable in x (the exact-
        boundary lift evaluates it on the boundary projections of interior points)."""
        return self.exact(x)

    def sample_interior(self, n: int, generator: torch.Generator | None = None, device=None,
                        dtype=torch.float32) -> torch.Tensor:
        """n points uniform in the open cube, shape (n, dim)."""
        return torch.rand(n, self.dim, generator=generator, dtype=dtype).to(device)

    def sample_boundary(self, n: int, generator: torch.Generator | None = None, device=None,
                        dtype=torch.float32) -> torch.Tensor:
        """n points uniform on the boundary (every face equally likely), shape (n, dim).

        In 1-D the boundary is the two end points; they alternate so both are always present."""
        if self.dim == 1:
            return (torch.arange(n) % 2).to(dtype).unsqueeze(1).to(device)
        x = torch.rand(n, self.dim, generator=generator, dtype=dtype)
        face = torch.randint(0, 2 * self.dim, (n,), generator=generator)
        rows = torch.arange(n)
        x[rows, face // 2] = (face % 2).to(dtype)
        return x.to(device)

    def describe(self) -> dict:
        return {"name": self.name, "dim": self.dim, "sign": self.sign, "residual_scale": self.residual_scale,
                "frequency": self.frequency}


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
