"""Finite-difference reference solutions on boxes (scipy.sparse), for problems without an exact solution.

Operator ``sign * Laplace(u) + reaction * u = f`` (Poisson, Helmholtz) with Dirichlet values: the standard
second-order (2d+1)-point stencil on a uniform grid with the same spacing h on every axis (up to rounding
of the side lengths), boundary nodes set to g, solved by a sparse LU factorisation (1-2-D) or MINRES (3-D:
LU fill-in took 9 minutes and 3.5 GB for 117,649 unknowns, MINRES 10 s and 0.3 GB, same values to 1e-8).  Heat
(``u_t + sign * Laplace(u) = f``, sign = -kappa): the same space stencil, Crank-Nicolson in time
(second order) with dt proportional to h.

Accuracy check (Richardson): three grids, spacings h, h/2, h/4.  With second-order errors ``u_h = u + C h^2``,
the extrapolations ``R1 = (4 u_{h/2} - u_h) / 3`` and ``R2 = (4 u_{h/4} - u_{h/2}) / 3`` remove the h^2 term;
the reference is R2 on the h/2-grid nodes (the common nodes), and its error is estimated by
``|R1 - R2| / |R2|`` on the h-grid nodes, which is the error of the *coarser* extrapolation R1 (R2's own is
smaller again, 16x for a smooth solution).  The estimate and the observed convergence order
``log2(|u_h - u_{h/2}| / |u_{h/2} - u_{h/4}|)`` are recorded; the solver refuses to call a reference good
when the estimate is not below the figure it reports (``metrics["reference"]``).
"""
from __future__ import annotations

import math
import time

import numpy as np

from inr.errors import InputError

MAX_UNKNOWNS = {1: 1_000_000, 2: 600_000, 3: 120_000}   # finest grid (space) unknowns: sparse LU fill grows fast in 3-D
MAX_TIME_STEPS = 4096


def _axes(box, h):
    """Node coordinates per axis for spacing about h (a whole number of intervals per side)."""
    out = []
    for a, b in box:
        n = max(2, int(round((b - a) / h)))
        out.append(np.linspace(a, b, n + 1))
    return out


def _grid(axes):
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], 1)


def _operator(problem, axes):
    """Sparse ``sign * Laplace + reaction`` on all nodes of the grid (rows of boundary nodes unused) and the
    interior mask."""
    import scipy.sparse as sps

    shape = [len(a) for a in axes]
    eyes = [sps.identity(n, format="csr") for n in shape]
    A = None
    for i, a in enumerate(axes):
        h = a[1] - a[0]
        n = shape[i]
        D = sps.diags([np.ones(n - 1), -2 * np.ones(n), np.ones(n - 1)], [-1, 0, 1], format="csr") / (h * h)
        term = None
        for j in range(len(axes)):
            m = D if j == i else eyes[j]
            term = m if term is None else sps.kron(term, m, format="csr")
        A = term if A is None else A + term
    A = problem.sign * A
    if getattr(problem, "reaction", 0.0):
        A = A + problem.reaction * sps.identity(A.shape[0], format="csr")
    inner = np.ones(shape, dtype=bool)
    for i in range(len(axes)):
        sl = [slice(None)] * len(axes)
        sl[i] = 0
        inner[tuple(sl)] = False
        sl[i] = -1
        inner[tuple(sl)] = False
    return A.tocsr(), inner.reshape(-1)


def _values(fn, pts):
    import torch

    with torch.no_grad():
        return fn(torch.as_tensor(pts, dtype=torch.float64)).double().numpy().reshape(-1)


def _factor(M, dim: int):
    """A solver for the sparse symmetric matrix M: sparse LU in 1-2-D; MINRES (symmetric, definite or not,
    relative tolerance 1e-13) in 3-D, where LU fill-in costs minutes and gigabytes."""
    from scipy.sparse.linalg import minres, splu

    if dim <= 2:
        lu = splu(M.tocsc())
        return lu.solve
    M = M.tocsr()

    def solve(b):
        x, info = minres(M, b, rtol=1e-13, maxiter=20 * M.shape[0])
        if info != 0:
            raise InputError("finite-difference reference: the iterative solver did not converge (is k^2 an "
                             "eigenvalue of -Laplace on this box?)")
        return x
    return solve


def solve_elliptic(problem, h: float):
    """FD solution on the grid of spacing about h: (axes, values on all nodes)."""
    axes = _axes(problem.box, h)
    pts = _grid(axes)
    A, inner = _operator(problem, axes)
    u = np.zeros(len(pts))
    bnd = ~inner
    u[bnd] = _values(problem.boundary_values, pts[bnd])
    f = _values(problem.source, pts[inner])
    Aii = A[inner][:, inner].tocsc()
    rhs = f - A[inner][:, bnd] @ u[bnd]
    try:
        u[inner] = _factor(Aii, problem.dim)(rhs)
    except RuntimeError as e:   # singular: e.g. k^2 an eigenvalue of the discrete Laplacian
        raise InputError(f"finite-difference reference: the discrete problem is singular ({e}); is k^2 an "
                         f"eigenvalue of -Laplace on this box?") from None
    return axes, u


def solve_heat(problem, h: float, dt: float):
    """Crank-Nicolson FD solution: (space axes, times, values (n_times, n_space_nodes))."""
    import scipy.sparse as sps

    space_box, (t0, t1) = problem.box[:problem.dim], problem.box[problem.dim]
    axes = _axes(space_box, h)
    nt = max(2, int(round((t1 - t0) / dt)))
    times = np.linspace(t0, t1, nt + 1)
    dt = times[1] - times[0]
    xs = _grid(axes)
    A, inner = _operator(problem, axes)      # u_t = -A u + f
    bnd = ~inner
    Aii, Aib = A[inner][:, inner].tocsc(), A[inner][:, bnd]
    eye = sps.identity(Aii.shape[0], format="csc")
    lhs = _factor(eye + 0.5 * dt * Aii, problem.dim)
    rhs_m = (eye - 0.5 * dt * Aii).tocsr()

    def at(t):
        return np.concatenate([xs, np.full((len(xs), 1), t)], 1)

    u = _values(problem.initial_values, at(t0))
    out = np.empty((nt + 1, len(xs)))
    out[0] = u
    gb = _values(problem.boundary_values, at(t0)[bnd])
    b_old = _values(problem.source, at(t0)[inner]) - Aib @ gb
    for n in range(1, nt + 1):
        pts = at(times[n])
        gb = _values(problem.boundary_values, pts[bnd])
        b_new = _values(problem.source, pts[inner]) - Aib @ gb
        ui = lhs(rhs_m @ u[inner] + 0.5 * dt * (b_old + b_new))
        u = np.empty(len(xs))
        u[inner], u[bnd] = ui, gb
        out[n] = u
        b_old = b_new
    return axes, times, out


def _restrict(values: np.ndarray, shape_fine, factor=2):
    """Values on a grid -> the nodes of the grid with ``factor`` x the spacing (every factor-th node)."""
    v = values.reshape(shape_fine)
    return v[tuple(slice(None, None, factor) for _ in shape_fine)].reshape(-1)


def reference(problem, h: float | None = None, max_unknowns: int | None = None) -> dict:
    """The FD reference of ``problem`` (module docstring): ``{"points": (M, d) float64, "values": (M,),
    "info": {...}}``; ``h`` the coarsest spacing (default: the longest side / 1024, / 128, / 12 in 1-, 2-, 3-D;
    heat / 128, / 32, / 8), made coarser until the finest grid h/4 has at most ``max_unknowns`` nodes
    (default :data:`MAX_UNKNOWNS` by dimension)."""
    t_start = time.perf_counter()
    space = problem.box[:problem.dim]
    longest = max(b - a for a, b in space)
    d = problem.dim
    max_unknowns = max_unknowns or MAX_UNKNOWNS[d]
    if h is None:
        h = longest / {1: 1024, 2: 128, 3: 12}[d]
        if problem.time_dependent:
            h = longest / {1: 128, 2: 32, 3: 8}[d]

    def unknowns(hh):
        return math.prod(int(round((b - a) / hh)) + 1 for a, b in space)

    while unknowns(h / 4) > max_unknowns:
        h *= 1.25
    levels = [h, h / 2, h / 4]
    shapes, sols = [], []
    if problem.time_dependent:
        t0, t1 = problem.box[d]
        # dt ~ h (Crank-Nicolson: second order in both); at most MAX_TIME_STEPS steps on the finest grid
        n0 = max(4, int(round((t1 - t0) / h)))
        n0 = min(n0, MAX_TIME_STEPS // 4)
        for i, hh in enumerate(levels):
            axes, times, vals = solve_heat(problem, hh, (t1 - t0) / (n0 * 2 ** i))
            shapes.append([len(times)] + [len(a) for a in axes])
            sols.append((axes, times, vals))
        grids = [_grid([a for a in axes] + [times]) for axes, times, _ in sols]
        # order the values as (space..., t) to match the points
        flat = [np.moveaxis(v.reshape(s), 0, -1).reshape(-1) for (_, _, v), s in zip(sols, shapes)]
        shapes = [s[1:] + s[:1] for s in shapes]
    else:
        for hh in levels:
            axes, vals = solve_elliptic(problem, hh)
            shapes.append([len(a) for a in axes])
            sols.append((axes, vals))
        grids = [_grid(axes) for axes, _ in sols]
        flat = [v for _, v in sols]
    for i in (1, 2):
        if any(2 * (m - 1) != (n - 1) for m, n in zip(shapes[i - 1], shapes[i])):
            raise RuntimeError("finite-difference grids do not nest")   # an internal error, never a user's
    u0, u1, u2 = flat
    u1_on0, u2_on1 = _restrict(u1, shapes[1]), _restrict(u2, shapes[2])
    u2_on0 = _restrict(u2_on1, shapes[1])
    r1 = (4 * u1_on0 - u0) / 3
    r2 = (4 * u2_on1 - u1) / 3
    r2_on0 = _restrict(r2, shapes[1])
    norm = np.linalg.norm(r2_on0) or 1.0
    d01, d12 = np.linalg.norm(u0 - u1_on0), np.linalg.norm(u1_on0 - u2_on0)
    info = {
        "method": ("finite differences, 2nd order, " + ("sparse LU" if d <= 2 else "MINRES (rtol 1e-13)") + (", Crank-Nicolson in time" if problem.time_dependent else "")
                   + "; Richardson extrapolation of the two finest grids"),
        "spacings": [float(x) for x in levels],
        "grid_nodes": [int(np.prod(s)) for s in shapes],
        "estimated_rel_error": float(np.linalg.norm(r1 - r2_on0) / norm),
        "rel_error_finest_grid": float(np.linalg.norm(u2_on0 - r2_on0) / norm),
        "observed_order": float(math.log2(d01 / d12)) if d12 > 0 and d01 > 0 else None,
        "seconds": round(time.perf_counter() - t_start, 3),
    }
    return {"points": grids[1], "values": r2, "info": info, "shape": shapes[1]}
