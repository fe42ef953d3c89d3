"""Multiresolution hash-grid encoding (Instant-NGP; Mueller, Evans, Schied and Keller 2022).

For level ``l = 0..L-1`` the grid resolution is ``N_l = floor(base * b^l)`` with
``b = exp((ln finest - ln base) / (L - 1))``.  An input ``x`` in ``[-1, 1]^d`` is mapped to
``u = (x + 1) / 2`` in ``[0, 1]^d`` and scaled to ``p = u N_l``; the cell containing ``p`` has lower corner
``c = clamp(floor(p), 0, N_l - 1)`` and local coordinates ``w = p - c``.  The level's ``F`` features are
the d-linear interpolation of the ``2^d`` corner entries of the level's table:

    f_l(x) = sum_{o in {0,1}^d} prod_i (w_i if o_i else 1 - w_i) * table_l[index_l(c + o)]

``index_l`` is dense (``sum_i v_i (N_l + 1)^i``) when the level's ``(N_l + 1)^d`` vertices fit in the table
size ``T``, else the Instant-NGP spatial hash ``(xor_i (v_i * pi_i mod 2^32)) mod T`` with
``pi = (1, 2654435761, 805459861)`` (the uint32 arithmetic of the paper's code; ``T`` need not be a power
of 2).  Level ``l`` owns ``T_l = min(T, (N_l + 1)^d)`` entries, so the encoding has
``F * sum_l min(T, (N_l + 1)^d)`` parameters (:meth:`HashGridEncoding.count`), all in one flat
``(sum_l T_l, F)`` table: level ``l``'s indices are offset by ``sum_{k<l} T_k`` and one gather serves every
level.  The output is the ``L * F`` features concatenated level by level.

Outside ``[-1, 1]`` the outermost cell is extrapolated linearly (corners clamped, ``w`` outside
``[0, 1]``), which keeps the map continuous.

Memory: :class:`HashGridFn` saves only the int64 corner indices and the float corner weights
(``B * L * 2^d`` each; plus ``x`` when an input gradient is wanted) and its backward scatters
``grad * weight`` into the table gradient; no per-corner ``(B, 2^d, F)`` tensor is kept for autograd.

Gradients: w.r.t. the table (always) and w.r.t. the input ``x`` (first derivatives, exact:
``d f_l / d x_i = N_l / 2 * sum_o table_l[.] * d weight_o / d w_i``; a d-linear interpolant is
piecewise, so this is the derivative inside a cell, with the one-sided value of the upper cell on a cell
boundary).  Second derivatives (``create_graph=True`` through the encoding, as PDE residuals of order 2
need) are not supported: a backward with ``create_graph=True`` raises a RuntimeError (rather than return
a gradient that silently lacks its own graph).

Two public controls for fitting on a fixed coordinate set (e.g. the pixel grid of a CT image):

- :meth:`HashGridEncoding.fix_points` computes the corner indices and weights of a fixed ``(B, d)``
  point set once and keeps them (non-persistent buffers, so they follow ``.to()`` and are not saved);
  a later call with exactly those points (same shape and values, no input gradient wanted) reuses them
  instead of recomputing ``positions`` and ``corners``.  The result is the same gather of the same
  indices and weights, so it is bit-for-bit the plain forward; :meth:`HashGridEncoding.release_points`
  drops the cache.
- :meth:`HashGridEncoding.set_level_weights` multiplies level ``l``'s features by ``w_l`` (e.g. a
  coarse-to-fine schedule); ``None`` (the default) switches the multiplication off.  A level at
  weight 0 gets no table gradient.
"""
from __future__ import annotations

import math

import torch
from torch import nn
from ..errors import InputError

PRIMES = (1, 2654435761, 805459861)
_MASK32 = 0xFFFFFFFF
# Default finest resolution per input dimension (the caller should set it near the signal's own
# resolution): 512 covers the built-in 512x512 cameraman; 2^18 in 1-D (a few seconds of audio) also lets
# a budget of a few hundred thousand parameters be met with 8 levels, since a dense 1-D level has only
# N + 1 entries and the table size cannot grow past the all-dense size.
DEFAULT_FINEST = {1: 1 << 18, 2: 512, 3: 256}


def level_resolutions(levels: int, base_resolution: int, finest_resolution: int) -> list[int]:
    """``N_l = floor(base * b^l)``, ``b = exp((ln finest - ln base) / (L - 1))`` (``b = 1`` for one level).
    A relative 1e-9 is added before the floor so that ``N_{L-1}`` is ``finest`` despite rounding."""
    if levels == 1:
        return [int(base_resolution)]
    b = math.exp((math.log(finest_resolution) - math.log(base_resolution)) / (levels - 1))
    return [int(math.floor(base_resolution * b ** l * (1 + 1e-9))) for l in range(levels)]


class HashGridEncoding(nn.Module):
    """Multiresolution hash encoding of ``in_features`` (1, 2 or 3) coordinates in ``[-1, 1]``.

    Args:
        in_features: coordinate dimension d.
        levels: number of levels L.
        log2_table: table size per level as ``2^log2_table`` (used when ``table`` is None).
        features: features per level F.
        base_resolution, finest_resolution: resolutions of the coarsest and finest levels
            (``finest_resolution`` None: :data:`DEFAULT_FINEST` for d).
        table: table entries per level T (any positive integer; overrides ``log2_table``).

    Output: ``(..., L * F)``.
    """

    def __init__(self, in_features: int, levels: int = 16, log2_table: int = 14, features: int = 2,
                 base_resolution: int = 16, finest_resolution: int | None = None, table: int | None = None,
                 device=None, dtype=None):
        super().__init__()
        if in_features not in (1, 2, 3):
            raise InputError(f"HashGridEncoding takes 1, 2 or 3 input coordinates, got {in_features}")
        if finest_resolution is None:
            finest_resolution = DEFAULT_FINEST[in_features]
        T = int(table) if table is not None else 1 << int(log2_table)
        if levels < 1 or features < 1 or T < 1:
            raise InputError(f"levels, features and table size must be >= 1, got {levels}, {features}, {T}")
        if not 1 <= base_resolution <= finest_resolution:
            raise InputError(f"need 1 <= base_resolution <= finest_resolution, got {base_resolution}, "
                             f"{finest_resolution}")
        self.in_features, self.levels, self.features, self.table = int(in_features), int(levels), int(features), T
        self.base_resolution, self.finest_resolution = int(base_resolution), int(finest_resolution)
        self.resolutions = level_resolutions(self.levels, self.base_resolution, self.finest_resolution)
        d = self.in_features
        self.sizes = [min(T, (n + 1) ** d) for n in self.resolutions]
        self.dense = [(n + 1) ** d <= T for n in self.resolutions]
        self.n_dense = sum(self.dense)  # dense levels are a prefix: N_l grows with l
        offsets = [0]
        for s in self.sizes[:-1]:
            offsets.append(offsets[-1] + s)
        self.embeddings = nn.Parameter(torch.empty(sum(self.sizes), self.features, device=device,
                                                   dtype=dtype or torch.get_default_dtype()))
        fdt = self.embeddings.dtype
        # derived from the configuration: not saved in the state dict
        self.register_buffer("scale", torch.tensor(self.resolutions, dtype=fdt, device=device), persistent=False)
        self.register_buffer("offsets", torch.tensor(offsets, dtype=torch.int64, device=device)[:, None, None],
                             persistent=False)
        # per level and dimension: the multiplier of the vertex coordinate (dense strides, then the primes)
        mult = [[(n + 1) ** i for i in range(d)] if dense else list(PRIMES[:d])
                for n, dense in zip(self.resolutions, self.dense)]
        self.register_buffer("mult", torch.tensor(mult, dtype=torch.int64, device=device), persistent=False)
        # fix_points / set_level_weights (module docstring); derived state, never saved
        self.register_buffer("fixed_x", None, persistent=False)
        self.register_buffer("fixed_idx", None, persistent=False)
        self.register_buffer("fixed_wts", None, persistent=False)
        self.register_buffer("level_weights", None, persistent=False)
        self.reset_parameters()

    @property
    def out_features(self) -> int:
        return self.levels * self.features

    @staticmethod
    def count(in_features: int, levels: int = 16, log2_table: int = 14, features: int = 2,
              base_resolution: int = 16, finest_resolution: int | None = None, table: int | None = None) -> int:
        """Parameter count: ``F * sum_l min(T, (N_l + 1)^d)``."""
        T = int(table) if table is not None else 1 << int(log2_table)
        fin = DEFAULT_FINEST[in_features] if finest_resolution is None else finest_resolution
        return features * sum(min(T, (n + 1) ** in_features)
                              for n in level_resolutions(levels, base_resolution, fin))

    def reset_parameters(self) -> None:
        """U(-1e-4, 1e-4), the paper's initialisation."""
        with torch.no_grad():
            self.embeddings.uniform_(-1e-4, 1e-4)

    # -- the pieces (used by the autograd function) -----------------------------------------------
    # Layout: positions are (d, L, B), so every broadcast runs along a contiguous batch row; corner indices
    # and weights are (L, B, 2^d), one row of 2^d corners per (level, point): embedding_bag's bags.

    def positions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, d)`` inputs -> lower cell corners ``c`` (d, L, B) int64 and local coordinates ``w`` (d, L, B)
        in the table's dtype.  ``p = u N_l`` is formed in float64 (but on MPS): in float32 its rounding at
        ``N ~ 2^17`` (the 1-D default finest level) would quantise ``w`` to steps of 1/64."""
        wide = torch.float32 if x.device.type == "mps" else torch.float64
        scale = self.scale.to(wide)
        p = (x.to(wide).t()[:, None, :] + 1) * (0.5 * scale[None, :, None])  # (d, L, B)
        c = torch.floor(p).clamp_(min=0)
        c = torch.minimum(c, (scale - 1)[None, :, None], out=c)
        return c.to(torch.int64), p.sub_(c).to(self.scale.dtype)

    def corner_bits(self) -> list[list[int]]:
        """``bits[k][i]``: whether corner k takes the upper vertex along dimension i."""
        d = self.in_features
        return [[(k >> (d - 1 - i)) & 1 for i in range(d)] for k in range(1 << d)]

    def corners(self, c: torch.Tensor, w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Flat-table indices (L, B, 2^d) int64 and d-linear weights (L, B, 2^d) of every corner."""
        d, k, L = self.in_features, self.n_dense, self.levels
        lo = c * self.mult.t()[:, :, None]                 # (d, L, B): coordinate term of the lower vertex
        hi = lo + self.mult.t()[:, :, None]                # upper vertex
        bits = self.corner_bits()
        idx = torch.empty(tuple(c.shape[1:]) + (1 << d,), dtype=torch.int64, device=c.device)
        for j, b in enumerate(bits):
            terms = [(hi if b[i] else lo)[i] for i in range(d)]
            for sl, op in ((slice(0, k), torch.add), (slice(k, L), torch.bitwise_xor)):
                # dense levels: sum of strided coordinates; hashed levels: xor of coordinate * prime
                if sl.start == sl.stop:
                    continue
                o = idx[sl, :, j]
                if d == 1:
                    o.copy_(terms[0][sl])
                else:
                    op(terms[0][sl], terms[1][sl], out=o)
                    for t in terms[2:]:
                        op(o, t[sl], out=o)
        if k < L:  # low 32 bits (uint32 arithmetic), mod T
            h = idx[k:]
            if self.table & (self.table - 1) == 0:  # a power of 2: mod T keeps the low bits
                h.bitwise_and_(self.table - 1)
            else:
                h.bitwise_and_(_MASK32).remainder_(self.table)
        idx.add_(self.offsets)  # (L, 1, 1) -> each level's block of the flat table
        wts = self.corner_weights(w, bits)
        return idx, wts

    @staticmethod
    def corner_weights(w: torch.Tensor, bits, skip: int | None = None) -> torch.Tensor:
        """``prod_i (w_i if bit_i else 1 - w_i)`` per corner -> (2^d, L, B); with ``skip = i`` the factor of
        dimension i is replaced by its derivative (+1 or -1), giving ``d weight / d w_i``.  (L, B, 2^d)."""
        d = w.shape[0]
        one_minus = 1 - w
        out = torch.empty(tuple(w.shape[1:]) + (len(bits),), dtype=w.dtype, device=w.device)
        for j, b in enumerate(bits):
            facs = [(w if b[i] else one_minus)[i] for i in range(d) if i != skip]
            o = out[..., j]
            if not facs:
                o.fill_(1.0)
            elif len(facs) == 1:
                o.copy_(facs[0])
            else:
                torch.mul(facs[0], facs[1], out=o)
                for f in facs[2:]:
                    o.mul_(f)
            if skip is not None and not b[skip]:
                o.neg_()
        return out

    # -- a whole regular grid at once (prediction; module docstring) ---------------------------------

    def grid_corners(self, axes) -> tuple[torch.Tensor, torch.Tensor]:
        """Corner indices and weights (L, B, 2^d) of every point of the regular grid spanned by ``axes``
        (d 1-D tensors of coordinates, row-major over the grid, B = the product of their lengths): the
        same numbers as ``corners(*positions(x))`` on the meshgrid of ``axes``, computed per axis (cells,
        weights and the axis terms of the index) and combined by broadcasting, since both the dense index
        and the hash are separable over the axes (a sum, an xor)."""
        d, k, L = self.in_features, self.n_dense, self.levels
        if len(axes) != d:
            raise ValueError(f"expected {d} axes, got {len(axes)}")
        wide = torch.float32 if self.embeddings.device.type == "mps" else torch.float64
        scale = self.scale.to(wide)[:, None]
        ns = [int(a.numel()) for a in axes]
        lo, hi, w = [], [], []
        for i, a in enumerate(axes):
            p = (a.to(self.embeddings.device).to(wide).reshape(1, -1) + 1) * (0.5 * scale)   # (L, n_i)
            c = torch.minimum(torch.floor(p).clamp_(min=0), scale - 1)
            view = [L] + [1] * d
            view[1 + i] = ns[i]
            m = self.mult[:, i:i + 1]
            lo_i = c.to(torch.int64) * m
            lo.append(lo_i.reshape(view))
            hi.append((lo_i + m).reshape(view))
            w.append((p - c).to(self.scale.dtype).reshape(view))
        bits = self.corner_bits()
        idx = torch.empty([L] + ns + [1 << d], dtype=torch.int64, device=self.embeddings.device)
        wts = torch.empty([L] + ns + [1 << d], dtype=self.scale.dtype, device=self.embeddings.device)
        for j, b in enumerate(bits):
            terms = [(hi[i] if b[i] else lo[i]) for i in range(d)]
            for sl, op in ((slice(0, k), torch.add), (slice(k, L), torch.bitwise_xor)):
                if sl.start == sl.stop:
                    continue
                acc = terms[0][sl]
                for t in terms[1:]:
                    acc = op(acc, t[sl])
                idx[sl, ..., j] = acc
            f = [(w[i] if b[i] else 1 - w[i]) for i in range(d)]
            acc = f[0]
            for t in f[1:]:
                acc = acc * t
            wts[..., j] = acc
        idx, wts = idx.reshape(L, -1, 1 << d), wts.reshape(L, -1, 1 << d)
        if k < L:
            h = idx[k:]
            if self.table & (self.table - 1) == 0:
                h.bitwise_and_(self.table - 1)
            else:
                h.bitwise_and_(_MASK32).remainder_(self.table)
        idx.add_(self.offsets)
        return idx, wts

    @torch.no_grad()
    def grid_forward(self, axes) -> torch.Tensor:
        """The encoding of every point of the grid spanned by ``axes`` (see :meth:`grid_corners`),
        ``(B, L * F)`` row-major, without autograd: equal to ``forward`` on the meshgrid of ``axes``."""
        idx, wts = self.grid_corners(axes)
        y = _interpolate(idx, wts.to(self.embeddings.dtype), self.embeddings)
        if self.level_weights is not None:
            y = y * self.level_weights.to(y.dtype).repeat_interleave(self.features)
        return y

    # -- a fixed point set and per-level weights (module docstring) ---------------------------------

    def fix_points(self, x: torch.Tensor) -> None:
        """Compute and keep the corner indices and weights of the ``(B, d)`` points ``x``; a later forward
        on exactly these points reuses them (bit-for-bit the same output and table gradient)."""
        if x.dim() != 2 or x.shape[-1] != self.in_features:
            raise ValueError(f"fix_points expects (B, {self.in_features}) points, got shape {tuple(x.shape)}")
        with torch.no_grad():
            x = x.detach().to(self.embeddings.device).clone()
            idx, wts = self.corners(*self.positions(x))
        self.fixed_x, self.fixed_idx, self.fixed_wts = x, idx, wts.to(self.embeddings.dtype)

    def release_points(self) -> None:
        """Forget the points of :meth:`fix_points`."""
        self.fixed_x = self.fixed_idx = self.fixed_wts = None

    def uses_fixed_points(self, x: torch.Tensor) -> bool:
        """Whether a forward on ``x`` takes the cached corners of :meth:`fix_points`."""
        f = self.fixed_x
        return (f is not None and not (x.requires_grad and torch.is_grad_enabled()) and x.shape == f.shape
                and x.dtype == f.dtype and x.device == f.device and bool(torch.equal(x, f)))

    def set_level_weights(self, weights) -> None:
        """Multiply level ``l``'s features by ``weights[l]`` (``L`` finite numbers); ``None``: all levels at 1."""
        if weights is None:
            self.level_weights = None
            return
        w = torch.as_tensor(weights, dtype=self.embeddings.dtype).reshape(-1)
        if w.numel() != self.levels or not bool(torch.isfinite(w).all()):
            raise ValueError(f"level weights must be {self.levels} finite numbers, got {tuple(w.shape)}")
        self.level_weights = w.to(self.embeddings.device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[-1] != self.in_features:
            raise InputError(f"expected {self.in_features} input coordinates, got shape {tuple(x.shape)}")
        lead = x.shape[:-1]
        flat = x.reshape(-1, self.in_features)
        if self.uses_fixed_points(flat):
            y = FixedPointsFn.apply(self.embeddings, self.fixed_idx, self.fixed_wts)
        else:
            y = HashGridFn.apply(flat, self.embeddings, self)
        if self.level_weights is not None:
            y = y * self.level_weights.to(y.dtype).repeat_interleave(self.features)
        return y.reshape(*lead, self.out_features)

    def extra_repr(self) -> str:
        return (f"in_features={self.in_features}, levels={self.levels}, features={self.features}, "
                f"table={self.table}, resolutions={self.resolutions[0]}..{self.resolutions[-1]}, "
                f"dense_levels={self.n_dense}")


def _interpolate(idx: torch.Tensor, wts: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``sum_corners wts * table[idx]``: (L, B, 2^d) indices and weights -> (B, L * F), in one fused
    gather-and-weighted-sum (``embedding_bag``, one bag per level and point)."""
    L, B, C = idx.shape
    out = torch.nn.functional.embedding_bag(idx.reshape(L * B, C), table, per_sample_weights=wts.reshape(L * B, C),
                                            mode="sum")
    F = table.shape[1]
    return out.reshape(L, B, F).transpose(0, 1).reshape(B, L * F)


def _scatter_table(grad, idx, wts, table_shape):
    """Table gradient: ``grad * weight`` of every corner scattered into its row, feature by feature."""
    L, B, C = idx.shape
    F = table_shape[1]
    g = grad.reshape(B, L, F).permute(2, 1, 0)[..., None]  # (F, L, B, 1)
    out = torch.zeros(table_shape, dtype=grad.dtype, device=grad.device)
    flat = idx.reshape(-1)
    for f in range(F):
        out[:, f].scatter_add_(0, flat, (wts * g[f]).reshape(-1))
    return out


class FixedPointsFn(torch.autograd.Function):
    """``(table, idx, wts) -> (B, L F)`` from corner indices and weights computed once
    (:meth:`HashGridEncoding.fix_points`); the backward is :class:`HashGridFn`'s table scatter, no input
    gradient."""

    @staticmethod
    def forward(ctx, table, idx, wts):
        ctx.save_for_backward(idx, wts)
        ctx.table_shape = table.shape
        return _interpolate(idx, wts, table)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        idx, wts = ctx.saved_tensors
        return _scatter_table(grad, idx, wts, ctx.table_shape), None, None


class HashGridFn(torch.autograd.Function):
    """``(x (B, d), table (sum T_l, F), encoding) -> (B, L F)`` with a scatter-add backward."""

    @staticmethod
    def forward(ctx, x, table, enc):
        c, w = enc.positions(x)
        idx, wts = enc.corners(c, w)
        wts = wts.to(table.dtype)
        ctx.enc = enc
        keep_x = ctx.needs_input_grad[0]
        ctx.save_for_backward(idx, wts, x if keep_x else None, table if keep_x else None)
        return _interpolate(idx, wts, table)

    @staticmethod
    def backward(ctx, grad):
        if torch.is_grad_enabled():  # create_graph=True: the backward below is not itself differentiable
            raise RuntimeError("HashGridEncoding does not support second derivatives (create_graph=True through "
                               "the encoding): its backward is once-differentiable; first derivatives in x and "
                               "the table are exact")
        idx, wts, x, table = ctx.saved_tensors
        enc = ctx.enc
        L, B, C = idx.shape
        F = enc.features
        g = grad.reshape(B, L, F).permute(2, 1, 0)[..., None]  # (F, L, B, 1)
        grad_x = grad_table = None
        if ctx.needs_input_grad[1]:
            # per feature: scatter grad * weight of every corner into that feature's column of the table
            grad_table = _scatter_table(grad, idx, wts, enc.embeddings.shape)
        if ctx.needs_input_grad[0]:
            _, w = enc.positions(x)
            w = w.to(grad.dtype)
            vals = table.index_select(0, idx.reshape(-1)).reshape(L, B, C, F)
            gdot = (vals * g.permute(1, 2, 3, 0)).sum(-1)        # (L, B, C): grad . corner entry
            half_n = 0.5 * enc.scale.to(grad.dtype)[:, None]      # dp / dx per level
            bits = enc.corner_bits()
            cols = [(gdot * enc.corner_weights(w, bits, skip=i)).sum(-1).mul_(half_n).sum(0)
                    for i in range(enc.in_features)]
            grad_x = torch.stack(cols, -1).to(x.dtype)
        return grad_x, grad_table, None
