"""Exact pieces of a univariate ReLU network (quadratic or conventional): a spline, found exactly.

With the ReLU pattern fixed, every neuron is a polynomial in x.  Starting from ``p(x) = x`` on the
domain, coefficient vectors are pushed through the layers (``nn.Linear``: affine combination;
``QuadraticLinear``: products are polynomial multiplications, ``x*x`` is squaring); at each ReLU the
real roots of the pre-activation polynomials inside the current interval (numpy's companion-matrix
roots, refined by Newton steps) split it, each sub-interval keeps or zeros each neuron, and the walk
continues per sub-interval.  The result lists every piece (maximal interval with one activation
pattern) and its polynomial in monomials of x, and converts to a sympy ``Piecewise``.

Always check the formula against the network (:func:`check`): rounding in high-degree coefficients
is reported, not hidden.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field

import numpy as np
import numpy.polynomial.polynomial as npoly
import torch
from torch import nn

from inr.layers.quadratic import QuadraticLinear
from inr.errors import InputError

EPS = np.finfo(np.float64).eps


class PiecesError(InputError):
    """The network is not a univariate piecewise-polynomial network this module can expand."""


@dataclass
class Piece:
    lo: float
    hi: float
    coef: np.ndarray            # ascending powers of x
    pattern: tuple = ()         # one tuple of 0/1 per ReLU layer

    @property
    def degree(self) -> int:
        nz = np.flatnonzero(self.coef)
        return int(nz[-1]) if nz.size else 0


@dataclass
class Breakpoint:
    x: float
    relu: int                   # which ReLU layer (0-based) changes pattern here
    neurons: tuple              # the neurons whose sign flips
    poly: np.ndarray            # pre-activation of the first of them, ascending powers of x


@dataclass
class PiecewisePolynomial:
    lo: float
    hi: float
    pieces: list = field(default_factory=list)
    breakpoints: list = field(default_factory=list)

    def __call__(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        his = np.array([p.hi for p in self.pieces])
        idx = np.clip(np.searchsorted(his, x, side="left"), 0, len(self.pieces) - 1)
        out = np.empty_like(x)
        for k in np.unique(idx):
            m = idx == k
            out[m] = npoly.polyval(x[m], self.pieces[k].coef)
        return out

    def max_coefficients(self) -> np.ndarray:
        """Largest |coefficient| of each degree over all pieces."""
        n = max(len(p.coef) for p in self.pieces)
        table = np.zeros((len(self.pieces), n))
        for i, p in enumerate(self.pieces):
            table[i, :len(p.coef)] = np.abs(p.coef)
        return table.max(axis=0)

    def to_sympy(self, exact: bool = False, digits: int = 17, symbol=None):
        """A sympy ``Piecewise`` over [lo, hi].

        ``exact=False``: coefficients and breakpoints as sympy Floats with ``digits`` digits.
        ``exact=True``: coefficients as the exact rationals of their float64 values, breakpoints as the
        exact real roots (rationals or ``CRootOf``) of their rational pre-activation polynomials,
        the root nearest the numeric one.  Meant for small networks (sympy root isolation).
        """
        import sympy as sp

        x = symbol if symbol is not None else sp.Symbol("x", real=True)
        num = (lambda v: sp.Rational(float(v))) if exact else (lambda v: sp.Float(float(v), digits))
        ends = [num(self.lo)]
        for bp in self.breakpoints:
            ends.append(_exact_root(bp, x) if exact else num(bp.x))
        ends.append(num(self.hi))
        args = []
        for k, p in enumerate(self.pieces):
            poly = sum((num(c) * x**i for i, c in enumerate(p.coef[:p.degree + 1])), sp.Integer(0))
            cond = sp.And(x >= ends[0], x <= ends[k + 1])  # Piecewise takes the first true condition
            args.append((poly, cond))
        return sp.Piecewise(*args)


def _exact_root(bp: Breakpoint, x):
    import sympy as sp

    poly = sp.Poly([sp.Rational(float(c)) for c in bp.poly[::-1]], x)
    roots = poly.real_roots()
    if not roots:
        raise PiecesError(f"no exact real root near breakpoint {bp.x!r}")
    return min(roots, key=lambda r: abs(float(r.evalf(30)) - bp.x))


# --------------------------------------------------------------------------- layers as polynomial maps

def affine_layers(model: nn.Module) -> list[nn.Module]:
    """Flatten ``model`` into Linear / QuadraticLinear / ReLU steps; reject anything else."""
    out: list[nn.Module] = []

    def visit(m: nn.Module):
        if isinstance(m, (nn.Linear, QuadraticLinear, nn.ReLU)):
            out.append(m)
        elif isinstance(m, nn.Identity):
            pass
        elif isinstance(m, nn.Sequential):
            for c in m:
                visit(c)
        else:
            raise PiecesError(f"cannot expand a {type(m).__name__} layer into polynomial pieces; supported: "
                              "nn.Linear, QuadraticLinear, nn.ReLU inside nn.Sequential")

    visit(model)
    affine = [m for m in out if not isinstance(m, nn.ReLU)]
    if not affine:
        raise PiecesError("the network has no Linear or QuadraticLinear layer")
    n_in = affine[0].in_features
    n_out = affine[-1].out_features
    if n_in != 1:
        raise PiecesError(f"pieces needs a univariate network (1 input); this one takes {n_in} inputs")
    if n_out != 1:
        raise PiecesError(f"pieces needs a scalar-output network; this one has {n_out} outputs")
    return out


def _np(t) -> np.ndarray | None:
    return None if t is None else t.detach().cpu().double().numpy()


def _rowmul(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Row-wise polynomial products of (n, da) and (n, db) coefficient arrays."""
    out = np.zeros((a.shape[0], a.shape[1] + b.shape[1] - 1))
    if a.shape[1] > b.shape[1]:
        a, b = b, a
    for i in range(a.shape[1]):
        out[:, i:i + b.shape[1]] += a[:, i:i + 1] * b
    return out


def _trim(p: np.ndarray) -> np.ndarray:
    nz = np.flatnonzero(np.any(p != 0, axis=0))
    return p[:, :(nz[-1] + 1 if nz.size else 1)]


def _affine(lin, p: np.ndarray) -> np.ndarray:
    out = _np(lin["w"]) @ p
    if lin["b"] is not None:
        out[:, 0] += _np(lin["b"])
    return out


def _params(layer) -> dict:
    def lin(m):
        return None if m is None else {"w": m.weight, "b": m.bias}
    if isinstance(layer, QuadraticLinear):
        return {"kind": "quad", "r": lin(layer.lin_r), "g": lin(layer.lin_g), "b": lin(layer.lin_b)}
    return {"kind": "lin", "r": lin(layer)}


def _apply(layer: dict, p: np.ndarray) -> np.ndarray:
    if layer["kind"] == "lin":
        return _trim(_affine(layer["r"], p))
    r = _affine(layer["r"], p)
    if layer["g"] is not None:
        r = _rowmul(r, _affine(layer["g"], p))
    sq = _affine(layer["b"], _rowmul(p, p))
    n = max(r.shape[1], sq.shape[1])
    return _trim(np.pad(r, ((0, 0), (0, n - r.shape[1]))) + np.pad(sq, ((0, 0), (0, n - sq.shape[1]))))


def real_roots_in(coef: np.ndarray, lo: float, hi: float) -> np.ndarray:
    """Real roots of the polynomial ``coef`` (ascending) strictly inside (lo, hi)."""
    nz = np.flatnonzero(coef)
    if nz.size == 0 or nz[-1] == 0:
        return np.empty(0)
    c = coef[:nz[-1] + 1]
    if c.size == 2:
        cand = np.array([-c[0] / c[1]])
    else:
        z = npoly.polyroots(c)
        scale = np.maximum(1.0, np.abs(z))
        cand = z.real[np.abs(z.imag) <= 1e-7 * scale]
    cand = cand[(cand > lo - 1e-9 * (hi - lo)) & (cand < hi + 1e-9 * (hi - lo))]
    if cand.size:
        cand = _newton(c, cand)
    return np.sort(cand[(cand > lo) & (cand < hi)])


def _newton(c: np.ndarray, x: np.ndarray, iters: int = 4) -> np.ndarray:
    dc = npoly.polyder(c)
    x = x.copy()
    for _ in range(iters):
        fx = npoly.polyval(x, c)
        d = npoly.polyval(x, dc)
        with np.errstate(divide="ignore", invalid="ignore"):
            nx = np.where(d != 0, x - fx / d, x)
        better = np.isfinite(nx) & (np.abs(npoly.polyval(nx, c)) <= np.abs(fx))
        x = np.where(better, nx, x)
    return x


def expand(model: nn.Module, lo: float = -1.0, hi: float = 1.0) -> PiecewisePolynomial:
    """Every piece of the univariate ReLU network ``model`` on [lo, hi], exactly (up to float64)."""
    if not hi > lo:
        raise PiecesError(f"domain must satisfy lo < hi, got [{lo}, {hi}]")
    steps = affine_layers(model)
    plan = [None if isinstance(m, nn.ReLU) else _params(m) for m in steps]
    result = PiecewisePolynomial(float(lo), float(hi))
    # stack of (lo, hi, next step, polynomials (n, deg+1), pattern); right parts pushed first
    stack = [(float(lo), float(hi), 0, np.array([[0.0, 1.0]]), ())]
    while stack:
        a, b, i, p, pattern = stack.pop()
        while i < len(plan) and plan[i] is not None:
            p = _apply(plan[i], p)
            i += 1
        if i == len(plan):
            result.pieces.append(Piece(a, b, p[0].copy(), pattern))
            continue
        relu = len(pattern)
        cuts = sorted(set(np.concatenate([real_roots_in(row, a, b) for row in p]).tolist()))
        merged: list[float] = []
        for r in cuts:  # roots of different neurons that agree to rounding are one breakpoint
            if not merged or r - merged[-1] > 8 * EPS * max(1.0, abs(r)):
                merged.append(r)
        edges = [a] + merged + [b]
        parts = []
        for lo_k, hi_k in zip(edges[:-1], edges[1:]):
            mask = npoly.polyval(0.5 * (lo_k + hi_k), p.T) > 0
            if parts and np.array_equal(parts[-1][2], mask):
                parts[-1][1] = hi_k
            else:
                parts.append([lo_k, hi_k, mask])
        for (_, left_hi, m0), (_, _, m1) in zip(parts[:-1], parts[1:]):
            flips = tuple(int(j) for j in np.flatnonzero(m0 != m1))
            result.breakpoints.append(Breakpoint(left_hi, relu, flips, p[flips[0]].copy()))
        for lo_k, hi_k, mask in reversed(parts):
            stack.append((lo_k, hi_k, i + 1, _trim(p * mask[:, None]), pattern + (tuple(mask.astype(int)),)))
    result.pieces.sort(key=lambda q: q.lo)
    result.breakpoints.sort(key=lambda q: q.x)
    return result


# --------------------------------------------------------------------------- checking against the network

def network_values(model: nn.Module, x: np.ndarray) -> np.ndarray:
    """The network evaluated in float64 at ``x`` (a float64 copy; the model is not changed)."""
    net = copy.deepcopy(model).double().cpu()
    with torch.no_grad():
        return net(torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64))[:, None])[:, 0].numpy()


def check(model: nn.Module, pw: PiecewisePolynomial, n: int = 200_001) -> dict:
    """max |formula - network| on ``n`` equispaced float64 points of the domain plus every breakpoint."""
    x = np.concatenate([np.linspace(pw.lo, pw.hi, n), [bp.x for bp in pw.breakpoints]])
    net = network_values(model, x)
    err = np.abs(pw(x) - net)
    max_net = float(np.max(np.abs(net)))
    max_err = float(np.max(err))
    return {"max_abs_error": max_err, "max_abs_network": max_net,
            "relative_error": max_err / max_net if max_net > 0 else max_err, "grid_points": int(x.size)}
