"""PDEs written down by the user: Poisson, Helmholtz and heat on boxes (docs/methods.md section 5).

- ``poisson``:   ``-Laplace(u) = f`` in a 1-3-D box;
- ``helmholtz``: ``-Laplace(u) - k^2 u = f`` in a 1-3-D box;
- ``heat``:      ``u_t = kappa Laplace(u) + f`` on a 1-3-D box x [0, T] (t is the last input).

Source ``f``, boundary values ``g``, initial values ``u0`` and the exact solution ``u*`` are expressions in
the coordinates (``x``, ``y``, ``z`` and ``t``; :func:`pde.expr.parse`), numbers, or Python callables of the
point array.  ``u*`` is optional; given as an expression, the source, boundary and initial values default
to the ones it implies (a *manufactured* solution: ``f`` comes from sympy's derivatives of ``u*``).
Without ``u*`` the boundary values default to 0 and the error is measured against a finite-difference
reference (:mod:`pde.reference`).

From Python: ``BoxProblem(EquationSpec(...))`` or ``EquationSpec(...).build()``; from the command line:
``python -m pde solve --equation poisson --domain 0,1x0,2 --source 1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from inr.errors import InputError

from . import expr as expr_mod
from .problems import Problem

EQUATIONS = ("poisson", "helmholtz", "heat")
SPACE = ("x", "y", "z")
MAX_EXTENT = 1e6


def parse_domain(text: str, flag: str = "--domain") -> tuple:
    """``"0,1x0,2"`` -> ((0.0, 1.0), (0.0, 2.0)): one ``lo,hi`` per axis, axes joined by ``x``, 1-3 axes."""
    if not isinstance(text, str):
        return check_domain(text, flag)
    parts = [p for p in text.lower().replace(" ", "").split("x")]
    axes = []
    for p in parts:
        ab = p.split(",")
        if len(ab) != 2:
            raise InputError(f"{flag} {text!r}: each axis is 'lo,hi' and axes are joined by 'x' (e.g. 0,1x0,2)")
        try:
            axes.append((float(ab[0]), float(ab[1])))
        except ValueError:
            raise InputError(f"{flag} {text!r}: {p!r} is not two numbers 'lo,hi'") from None
    return check_domain(axes, flag)


def check_domain(axes, flag: str = "--domain") -> tuple:
    try:
        axes = tuple((float(a), float(b)) for a, b in axes)
    except (TypeError, ValueError):
        raise InputError(f"{flag} must be a list of (lo, hi) pairs, got {axes!r}") from None
    if not 1 <= len(axes) <= 3:
        raise InputError(f"{flag}: 1 to 3 space axes are supported, got {len(axes)}")
    for a, b in axes:
        if not (math.isfinite(a) and math.isfinite(b) and a < b):
            raise InputError(f"{flag}: each axis needs finite lo < hi, got {a:g},{b:g}")
        if b - a > MAX_EXTENT or max(abs(a), abs(b)) > MAX_EXTENT:
            raise InputError(f"{flag}: coordinates beyond +-{MAX_EXTENT:g} are not supported, got {a:g},{b:g}")
        if (b - a) < 1e-6 * max(1.0, abs(a), abs(b)):
            raise InputError(f"{flag}: axis {a:g},{b:g} is too thin for float32 coordinates")
    return axes


@dataclass
class EquationSpec:
    """A problem written down: the equation, the box and the data (module docstring).

    ``source``, ``boundary``, ``initial``, ``exact``: text, a number, or a callable ``f(X) -> N values`` with
    X of shape (N, inputs) in the problem's coordinates (space axes, then t).  ``None`` (default): from
    ``exact`` where given, else 0 (source 0, zero boundary; heat: ``initial`` is required then).
    ``n``: the solution's frequency hint for the model's default frequencies (None: 1, Helmholtz
    ``ceil(k L / pi)`` for the longest side L).  ``residual_scale`` None: max(1, k^2, RMS of f).
    """
    equation: str = "poisson"
    domain: Any = "0,1x0,1"
    source: Any = None
    boundary: Any = None
    initial: Any = None
    exact: Any = None
    k: float = 0.0             # Helmholtz wave number
    kappa: float = 1.0         # heat diffusivity
    t_end: float = 1.0         # heat: t in [0, t_end]
    n: int | None = None
    residual_scale: float | None = None
    name: str | None = None

    def __post_init__(self):
        if self.equation not in EQUATIONS:
            raise InputError(f"--equation must be one of {', '.join(EQUATIONS)}, got {self.equation!r}")
        for nm, lo in (("k", 0.0), ("kappa", None), ("t_end", None)):
            v = getattr(self, nm)
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or \
                    (v < 0 if lo is not None else v <= 0) or abs(v) > 1e6:
                raise InputError(f"--{nm.replace('_', '-')} must be a finite number {'>= 0' if lo is not None else '> 0'}"
                                 f" (at most 1e6), got {v!r}")
        if self.k and self.equation != "helmholtz":
            raise InputError("--k is the Helmholtz wave number; it needs --equation helmholtz")
        if self.n is not None and (isinstance(self.n, bool) or not float(self.n).is_integer() or not 1 <= self.n <= 1000):
            raise InputError(f"--n must be an integer in 1..1000 (the solution's frequency), got {self.n!r}")
        if self.residual_scale is not None and not (math.isfinite(self.residual_scale) and self.residual_scale > 0):
            raise InputError(f"--residual-scale must be a finite number > 0, got {self.residual_scale!r}")
        self.domain_axes = parse_domain(self.domain)
        if self.equation == "heat" and self.exact is None and self.initial is None:
            raise InputError("--equation heat needs --initial (the values at t = 0) or --exact")

    def to_dict(self) -> dict:
        """JSON-able description (callables by their name)."""
        out = {}
        for k in ("equation", "domain", "source", "boundary", "initial", "exact", "k", "kappa", "t_end", "n",
                  "residual_scale", "name"):
            v = getattr(self, k)
            if callable(v):
                v = f"<callable {getattr(v, '__name__', type(v).__name__)}>"
            elif k == "domain" and not isinstance(v, str):
                v = [list(a) for a in self.domain_axes]
            out[k] = v
        return out

    def build(self) -> "BoxProblem":
        return BoxProblem(self)


class BoxProblem(Problem):
    """A Poisson, Helmholtz or heat problem on a box from an :class:`EquationSpec` (module docstring)."""

    def __init__(self, spec: EquationSpec):
        import sympy as sp

        self.spec = spec
        self.name = spec.name or spec.equation
        self.dim = len(spec.domain_axes)
        self.time_dependent = spec.equation == "heat"
        self.bounds = spec.domain_axes + (((0.0, float(spec.t_end)),) if self.time_dependent else ())
        self.variables = SPACE[:self.dim] + (("t",) if self.time_dependent else ())
        if spec.equation == "heat":
            self.sign, self.reaction = -float(spec.kappa), 0.0
        else:
            self.sign, self.reaction = -1.0, -float(spec.k) ** 2
        box = self.box
        parse = lambda v, nm: expr_mod.parse(v, self.variables, name=nm, bounds=box)
        syms = [sp.Symbol(v, real=True) for v in self.variables]
        ex = spec.exact
        if isinstance(ex, str) or isinstance(ex, (int, float)) and not isinstance(ex, bool):
            ex = expr_mod.parse_sympy(str(ex), self.variables, name="--exact", bounds=box)
        self._exact = None if ex is None else parse(ex, "--exact")
        manufactured = ex is not None and not callable(ex)
        if spec.source is not None:
            self._source = parse(spec.source, "--source")
        elif manufactured:
            lap = sum(sp.diff(ex, s_, 2) for s_ in syms[:self.dim])
            f = self.sign * lap + self.reaction * ex
            if self.time_dependent:
                f = f + sp.diff(ex, syms[-1])
            self._source = expr_mod.to_torch(sp.simplify(f) if sp.count_ops(f) < 200 else f, self.variables)
        elif ex is not None:
            raise InputError("--source is needed with a callable exact solution (it cannot be differentiated "
                             "symbolically)")
        else:
            self._source = parse(0.0, "--source")
        self._boundary = parse(spec.boundary, "--boundary-values") if spec.boundary is not None else \
            (self._exact if self._exact is not None else None)
        self.zero_boundary = self._boundary is None
        if self._boundary is None:
            self._boundary = parse(0.0, "--boundary-values")
        self._initial = parse(spec.initial, "--initial") if spec.initial is not None else self._exact
        if self.time_dependent and self._initial is None:
            raise InputError("--equation heat needs --initial (the values at t = 0) or --exact")
        if self.time_dependent and self.zero_boundary:
            self.zero_boundary = False   # the initial values still need the lift
        lengths = [b - a for a, b in spec.domain_axes]
        if spec.n is not None:
            self.frequency = int(spec.n)
        elif spec.equation == "helmholtz" and spec.k:
            self.frequency = max(1, math.ceil(spec.k * max(lengths) / math.pi))
        else:
            self.frequency = 1
        self.check()
        if spec.residual_scale is not None:
            self.residual_scale = float(spec.residual_scale)
        else:
            pts = self.sample_interior(4096, torch.Generator().manual_seed(0), dtype=torch.float64)
            rms = float(self.source(pts).square().mean().sqrt())
            self.residual_scale = max(1.0, spec.k ** 2, rms)

    def check(self) -> None:
        """Evaluate every piece at probe points in float64 (before any training): shapes and finiteness.
        A callable that fails or returns the wrong shape is reported here, not after training."""
        g = torch.Generator().manual_seed(1)
        inner = self.sample_interior(64, g, dtype=torch.float64)
        bnd = self.sample_boundary(64, g, dtype=torch.float64)
        pieces = [("--source", self.source, inner), ("--boundary-values", self.boundary_values, bnd)]
        if self._exact is not None:
            pieces.append(("--exact", self.exact, inner))
        if self.time_dependent:
            t0 = inner.clone()
            t0[:, -1] = 0.0
            pieces.append(("--initial", self.initial_values, t0))
        for nm, fn, pts in pieces:
            try:
                with torch.no_grad():
                    v = fn(pts)
            except InputError:
                raise
            except Exception as e:   # a user's callable: its own error, named
                raise InputError(f"{nm}: evaluating it at {pts.shape[0]} points failed ({type(e).__name__}: "
                                 f"{' '.join(str(e).split())[:200]})") from None
            if not torch.is_tensor(v) or tuple(v.shape) != (pts.shape[0], 1):
                raise InputError(f"{nm}: expected {pts.shape[0]} values, got shape "
                                 f"{tuple(getattr(v, 'shape', ()))}")
            if not bool(torch.isfinite(v).all()):
                raise InputError(f"{nm}: not finite at some points of the domain")

    @property
    def has_exact(self) -> bool:
        return self._exact is not None

    def exact(self, x):
        if self._exact is None:
            raise NotImplementedError(f"problem {self.name!r} has no exact solution")
        return self._exact(x)

    def source(self, x):
        return self._source(x)

    def boundary_values(self, x):
        return self._boundary(x)

    def initial_values(self, x):
        return self._initial(x)

    def describe(self):
        return {**super().describe(), "equation": self.spec.to_dict(), "has_exact": self.has_exact}

