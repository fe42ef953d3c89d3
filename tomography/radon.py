"""Differentiable parallel-beam projector that reproduces ``skimage.transform.radon``.

Geometry (the same as scikit-image): pixel ``(i, j)`` has its centre at integer coordinates; the
image is zero-padded to a square of side ``ceil(sqrt(2) * max(H, W))`` (``circle=False``) or cropped
to the centred ``min(H, W)`` square (``circle=True``); the rotation axis is the pixel ``N // 2`` of
that square; at angle ``theta`` (degrees) detector bin ``c`` integrates the line
``(x, y) = (cos t * u + sin t * s, -sin t * u + cos t * s) + N // 2`` over ``s``, ``u = c - N // 2``,
``x`` the column and ``y`` the row, sampled at unit steps with bilinear interpolation.

scikit-image rotates the image once per angle.  Here the same samples and bilinear weights are
collected once per geometry into a sparse matrix ``A`` (CSR, 32-bit indices, duplicates summed), so
the projection is one sparse-times-dense product and the back-projection is the product with the
exact transpose ``A^T`` (kept as a second CSR matrix, because a transposed CSR product is slow).
CPU products use scipy's CSR kernel, GPU products torch's (cuSPARSE); both see the same matrices.
Both are wrapped in an autograd Function whose backward is the other one, so gradients of any
order flow through.  Sinograms are laid out ``(..., n_angles, n_detectors)``; scikit-image's
layout is the transpose ``(n_detectors, n_angles)``.

Fan beam (:class:`FanGeometry`, :func:`fan_geometry`): a point source on a circle of radius
``source_distance`` about the image centre and a flat detector at ``detector_distance`` from the
source, perpendicular to the central ray, ``n_det`` bins of width ``pitch`` (its centre shifted by
``det_offset`` along the detector), all lengths in image pixels.  At source angle ``beta`` the source
is at ``c + D (cos beta, sin beta)`` (``c`` the image centre ``((W - 1) / 2, (H - 1) / 2)``, ``x`` the
column, ``y`` the row) and bin ``i`` at ``u_i = (i - (n_det - 1) / 2) pitch + det_offset`` along
``(-sin beta, cos beta)``.  Each bin integrates the straight line from the source to its centre,
sampled every ``step`` pixels (symmetrically about the point of the line nearest the centre) with
bilinear interpolation and weight ``step``; the samples go into the same sparse matrices, so the
adjoint is again the exact transpose.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from inr.errors import InputError

from inr.errors import InputError


@dataclass(frozen=True)
class Geometry:
    """Where an ``H x W`` image sits in scikit-image's projection square of side ``n_det``."""

    shape: tuple
    theta: tuple
    circle: bool

    def __post_init__(self):
        H, W = self.shape
        if H < 1 or W < 1:
            raise InputError(f"image shape must be positive, got {self.shape}")
        if len(self.theta) == 0:
            raise InputError("at least one projection angle (view) is needed, got 0")
        if not all(math.isfinite(t) for t in self.theta):
            raise InputError("projection angles must be finite numbers (degrees)")

    @property
    def n_det(self) -> int:
        H, W = self.shape
        return min(H, W) if self.circle else int(math.ceil(math.sqrt(2) * max(H, W)))

    @property
    def n_angles(self) -> int:
        return len(self.theta)

    @property
    def offset(self) -> tuple:
        """``(row, col)`` of the square's pixel ``(0, 0)`` in image coordinates."""
        H, W = self.shape
        N = self.n_det
        if self.circle:  # skimage crops with slice(ceil(excess / 2), ...)
            return (int(math.ceil((H - N) / 2)), int(math.ceil((W - N) / 2)))
        pad = [N - s for s in (H, W)]
        before = [(s + p) // 2 - s // 2 for s, p in zip((H, W), pad)]
        return (-before[0], -before[1])

    @property
    def axis(self) -> tuple:
        """The rotation axis in image pixel coordinates ``(row, col)``."""
        o = self.offset
        return (o[0] + self.n_det // 2, o[1] + self.n_det // 2)


@dataclass(frozen=True)
class FanGeometry:
    """Flat-detector fan beam (module docstring); lengths in image pixels, ``theta`` source angles in degrees.

    ``circle``: only the disc that every view covers (radius :attr:`fov_radius` about the image
    centre) can be non-zero (:meth:`support`); False: every pixel is modelled."""

    shape: tuple
    theta: tuple
    source_distance: float
    detector_distance: float
    n_det: int
    pitch: float = 1.0
    det_offset: float = 0.0
    circle: bool = True
    step: float = 1.0

    def __post_init__(self):
        H, W = self.shape
        if H < 1 or W < 1:
            raise InputError(f"image shape must be positive, got {self.shape}")
        if len(self.theta) == 0:
            raise InputError("at least one projection angle (view) is needed, got 0")
        if not all(math.isfinite(t) for t in self.theta):
            raise InputError("projection angles must be finite numbers (degrees)")
        vals = (self.source_distance, self.detector_distance, self.pitch, self.det_offset, self.step)
        if not all(math.isfinite(v) for v in vals):
            raise InputError("fan-beam distances, pitch, offset and step must be finite numbers")
        if int(self.n_det) != self.n_det or self.n_det < 1:
            raise InputError(f"the detector needs at least one bin, got {self.n_det}")
        if not self.pitch > 0 or not 0 < self.step <= 2:
            raise InputError(f"detector pitch must be > 0 and the ray step in (0, 2] pixels, got {self.pitch}, "
                             f"{self.step}")
        half_diag = 0.5 * math.hypot(H, W)
        if not self.source_distance > half_diag:
            raise InputError(f"--source-distance must exceed half the image diagonal ({half_diag:.1f} pixels), "
                             f"so the source lies outside the image; got {self.source_distance:g}")
        if not self.detector_distance > self.source_distance:
            raise InputError(f"--detector-distance (source to detector, {self.detector_distance:g}) must exceed "
                             f"--source-distance (source to centre, {self.source_distance:g})")
        if self.fov_radius <= 0:
            raise InputError("the detector does not straddle the central ray (--detector-offset too large)")

    @property
    def n_angles(self) -> int:
        return len(self.theta)

    @property
    def magnification(self) -> float:
        return self.detector_distance / self.source_distance

    def detector_positions(self) -> np.ndarray:
        """Bin centres ``u_i`` along the detector (pixels)."""
        return (np.arange(self.n_det) - (self.n_det - 1) / 2) * self.pitch + self.det_offset

    @property
    def fov_radius(self) -> float:
        """Radius (pixels) of the disc about the centre that every view's fan covers."""
        half = self.n_det * self.pitch / 2
        lo, hi = half - self.det_offset, half + self.det_offset   # edges on either side of the central ray
        g = min(math.atan(lo / self.detector_distance), math.atan(hi / self.detector_distance))
        return self.source_distance * math.sin(g) if g > 0 else 0.0

    def support(self) -> np.ndarray:
        H, W = self.shape
        if not self.circle:
            return np.ones((H, W), bool)
        r = np.arange(H)[:, None] - (H - 1) / 2
        c = np.arange(W)[None, :] - (W - 1) / 2
        return r * r + c * c <= self.fov_radius ** 2

    def to_dict(self) -> dict:
        return {"kind": "fan", "shape": list(self.shape), "source_distance": self.source_distance,
                "detector_distance": self.detector_distance, "n_det": self.n_det, "pitch": self.pitch,
                "det_offset": self.det_offset, "circle": self.circle, "step": self.step}


def fan_geometry(shape, theta, source_distance: float | None = None, detector_distance: float | None = None,
                 n_det: int | None = None, pitch: float | None = None, det_offset: float = 0.0,
                 circle: bool = True) -> FanGeometry:
    """A :class:`FanGeometry` with defaults: source at twice the larger image side from the centre,
    detector at twice that from the source (magnification 2), pitch = magnification (one image pixel at
    the centre), and enough bins for the fan to cover the inscribed disc (``circle``) or the whole
    image, plus a bin of margin on each side."""
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise InputError(f"image shape must be (H, W), got {shape}")
    H, W = shape
    dso = float(source_distance) if source_distance is not None else 2.0 * max(H, W)
    dsd = float(detector_distance) if detector_distance is not None else 2.0 * dso
    pitch = float(pitch) if pitch is not None else dsd / dso
    if n_det is None:
        R = (min(H, W) / 2 if circle else 0.5 * math.hypot(H, W)) + 1.0
        if not dso > R:
            raise InputError(f"--source-distance must exceed the radius the fan has to cover ({R:.1f} pixels), "
                             f"got {dso:g}")
        if not pitch > 0:
            raise InputError(f"--detector-pitch must be > 0, got {pitch:g}")
        u = dsd * math.tan(math.asin(R / dso)) + abs(det_offset)
        n_det = 2 * int(math.ceil(u / pitch)) + 2
    theta = tuple(float(t) for t in np.atleast_1d(np.asarray(theta, dtype=np.float64)))
    return FanGeometry(shape, theta, dso, dsd, int(n_det), pitch, float(det_offset), bool(circle))


def geometry_from_dict(d: dict, theta) -> "Geometry | FanGeometry":
    """The geometry of :meth:`FanGeometry.to_dict` / :func:`geometry_dict` with the angles ``theta``."""
    if d.get("kind") == "fan":
        return FanGeometry(tuple(int(v) for v in d["shape"]), tuple(float(t) for t in theta),
                           float(d["source_distance"]), float(d["detector_distance"]), int(d["n_det"]),
                           float(d["pitch"]), float(d["det_offset"]), bool(d["circle"]), float(d.get("step", 1.0)))
    return make_geometry(d["shape"], theta, bool(d["circle"]))


def geometry_dict(geom) -> dict:
    """JSON-able description of a geometry without its angles."""
    if isinstance(geom, FanGeometry):
        return geom.to_dict()
    return {"kind": "parallel", "shape": list(geom.shape), "circle": geom.circle, "n_det": geom.n_det}


def make_geometry(shape, theta, circle: bool = True) -> Geometry:
    shape = tuple(int(s) for s in shape)
    if len(shape) != 2:
        raise InputError(f"image shape must be (H, W), got {shape}")
    theta = tuple(float(t) for t in np.atleast_1d(np.asarray(theta, dtype=np.float64)))
    return Geometry(shape, theta, bool(circle))


def uniform_angles(views: int, angle_range: float = 180.0) -> np.ndarray:
    """``views`` equally spaced angles (degrees) over ``[0, angle_range)``, the end excluded."""
    if int(views) != views or views < 1:
        raise InputError(f"number of views must be a positive integer, got {views}")
    if not 0 < angle_range <= 360:
        raise InputError(f"angle range must be in (0, 360] degrees, got {angle_range}")
    return np.linspace(0.0, float(angle_range), int(views), endpoint=False)


def _triplets(geom: Geometry, angles: np.ndarray, first_row: int):
    """Rows, columns and bilinear weights of the samples scikit-image takes for ``angles``."""
    H, W = geom.shape
    N, ctr = geom.n_det, geom.n_det // 2
    o_r, o_c = geom.offset
    t = np.deg2rad(angles)[:, None, None]
    cos, sin = np.cos(t), np.sin(t)
    idx = np.arange(N, dtype=np.float64)
    c, r = idx[None, None, :], idx[None, :, None]  # output column (detector), output row (ray step)
    # skimage's warp matrix [[cos, sin, -ctr (cos + sin - 1)], [-sin, cos, -ctr (cos - sin - 1)]]
    xs = cos * c + sin * r - ctr * (cos + sin - 1)
    ys = -sin * c + cos * r - ctr * (cos - sin - 1)
    rows = np.broadcast_to((first_row + np.arange(len(angles))[:, None, None] * N
                            + np.arange(N)[None, None, :]).astype(np.int32), xs.shape)
    x0, y0 = np.floor(xs), np.floor(ys)
    dx, dy = xs - x0, ys - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out_r, out_c, out_w = [], [], []
    for ddy, ddx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        py, px = y0 + ddy, x0 + ddx  # neighbour in the square; zero outside it and outside the image
        iy, ix = py + o_r, px + o_c
        keep = ((py >= 0) & (py < N) & (px >= 0) & (px < N) & (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W))
        w = (dy[keep] if ddy else 1 - dy[keep]) * (dx[keep] if ddx else 1 - dx[keep])
        out_r.append(rows[keep])
        out_c.append((iy[keep] * W + ix[keep]).astype(np.int32))
        out_w.append(w)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_w)


def _fan_triplets(geom: FanGeometry, angles: np.ndarray):
    """Rows, columns and weights of the fan-beam ray samples for ``angles`` (module docstring)."""
    H, W = geom.shape
    N = geom.n_det
    cy, cx = (H - 1) / 2, (W - 1) / 2
    R = 0.5 * math.hypot(H, W) + 1.0
    K = int(math.ceil(R / geom.step))
    t = np.deg2rad(angles)[:, None]
    cos, sin = np.cos(t), np.sin(t)                               # (k, 1)
    D, S = geom.source_distance, geom.detector_distance
    u = geom.detector_positions()[None, :]                         # (1, N)
    sx, sy = D * cos, D * sin                                      # source, relative to the centre
    px, py = sx - S * cos - u * sin, sy - S * sin + u * cos        # bin centre
    dx, dy = px - sx, py - sy
    norm = np.hypot(dx, dy)
    dx, dy = dx / norm, dy / norm                                  # unit ray direction (k, N)
    tc = -(sx * dx + sy * dy)                                      # nearest point to the centre
    steps = (np.arange(-K, K + 1) * geom.step)[None, None, :]
    tt = tc[..., None] + steps
    xs = (sx[..., None] + tt * dx[..., None]) + cx                 # column coordinate (k, N, 2K + 1)
    ys = (sy[..., None] + tt * dy[..., None]) + cy                 # row coordinate
    rows = np.broadcast_to((np.arange(len(angles))[:, None, None] * N
                            + np.arange(N)[None, :, None]).astype(np.int32), xs.shape)
    x0, y0 = np.floor(xs), np.floor(ys)
    fx, fy = xs - x0, ys - y0
    x0, y0 = x0.astype(np.int64), y0.astype(np.int64)
    out_r, out_c, out_w = [], [], []
    for ddy, ddx in ((0, 0), (0, 1), (1, 0), (1, 1)):
        iy, ix = y0 + ddy, x0 + ddx
        keep = (iy >= 0) & (iy < H) & (ix >= 0) & (ix < W)
        w = (fy[keep] if ddy else 1 - fy[keep]) * (fx[keep] if ddx else 1 - fx[keep]) * geom.step
        out_r.append(rows[keep])
        out_c.append((iy[keep] * W + ix[keep]).astype(np.int32))
        out_w.append(w)
    return np.concatenate(out_r), np.concatenate(out_c), np.concatenate(out_w)


def estimate_nnz(geom) -> int:
    """An estimate (on the high side) of the projection matrix's non-zeros from the geometry alone, no
    allocation: ``2.2`` pixels per unit ray length (bilinear footprints of consecutive samples overlap;
    measured 1.9 for 256 x 256 parallel and 1.4 for fan beam) times the longest path of a ray through the
    image (the square's side for the parallel disc geometry, the diagonal otherwise)."""
    H, W = geom.shape
    if isinstance(geom, FanGeometry):
        length = math.hypot(H, W) / geom.step
    else:
        length = geom.n_det if geom.circle else math.hypot(H, W)
    return int(2.2 * geom.n_angles * geom.n_det * (length + 2))


def _build(geom):
    """scipy CSR matrices ``A`` (n_angles * n_det, H * W) and ``A^T`` in float64."""
    import scipy.sparse as sp

    H, W = geom.shape
    n_pix, N = H * W, geom.n_det
    theta = np.asarray(geom.theta)
    fan = isinstance(geom, FanGeometry)
    per_view = N * (2 * int(math.ceil((0.5 * math.hypot(H, W) + 1) / geom.step)) + 1) if fan else N ** 2
    chunk = max(1, 1_000_000 // per_view)
    blocks = []
    for a in range(0, len(theta), chunk):
        r, c, w = _fan_triplets(geom, theta[a:a + chunk]) if fan else _triplets(geom, theta[a:a + chunk], 0)
        k = len(theta[a:a + chunk])
        blocks.append(sp.coo_matrix((w, (r, c)), shape=(k * N, n_pix)).tocsr())  # sums duplicates
    A = sp.vstack(blocks, format="csr")
    A.eliminate_zeros()
    if A.nnz >= 2**31:
        raise InputError(f"projection matrix too large ({A.nnz} entries) for 32-bit indices")
    A.indices, A.indptr = A.indices.astype(np.int32), A.indptr.astype(np.int32)
    AT = A.T.tocsr()
    AT.indices, AT.indptr = AT.indices.astype(np.int32), AT.indptr.astype(np.int32)
    return A, AT


class _Pair:
    """``A`` and ``A^T`` for one geometry, dtype and device: scipy CSR on the CPU (its single-threaded
    product beat torch's CPU CSR product 1.5-4x here), torch CSR (cuSPARSE) on a GPU."""

    def __init__(self, A, AT, dtype, device):
        np_dtype = np.float32 if dtype == torch.float32 else np.float64
        self.device, self.dtype = device, dtype
        if device.type == "cpu":
            self.mats = tuple(m.astype(np_dtype) for m in (A, AT))
        else:
            self.mats = tuple(torch.sparse_csr_tensor(torch.from_numpy(m.indptr), torch.from_numpy(m.indices),
                                                      torch.from_numpy(m.data).to(dtype), m.shape,
                                                      check_invariants=False).to(device) for m in (A, AT))

    def matmul(self, x: torch.Tensor, transpose: bool) -> torch.Tensor:
        M = self.mats[1 if transpose else 0]
        if self.device.type == "cpu":
            return torch.from_numpy(np.ascontiguousarray(M @ x.detach().numpy()))
        return M @ x


_CACHE: "OrderedDict[tuple, _Pair]" = OrderedDict()
_BASE: "OrderedDict[Geometry, tuple]" = OrderedDict()
_CACHE_SIZE = 6


def _lru(cache, key, make):
    if key in cache:
        cache.move_to_end(key)
        return cache[key]
    cache[key] = value = make()
    while len(cache) > _CACHE_SIZE:
        cache.popitem(last=False)
    return value


def projection_matrices(geom, dtype=torch.float32, device=None) -> _Pair:
    """``A`` and ``A^T`` for ``geom`` in ``dtype`` on ``device`` (built once, least-recently-used cache)."""
    if dtype not in (torch.float32, torch.float64):
        raise InputError(f"projector dtype must be float32 or float64, got {dtype}")
    device = torch.device(device if device is not None else "cpu")
    base = lambda: _lru(_BASE, geom, lambda: _build(geom))
    return _lru(_CACHE, (geom, dtype, str(device)), lambda: _Pair(*base(), dtype, device))


class _SparseApply(torch.autograd.Function):
    """``A x`` (or ``A^T x``) for the constant matrices in ``pair``; the backward applies the other one."""

    @staticmethod
    def forward(ctx, x, pair, transpose):
        ctx.pair, ctx.transpose = pair, transpose
        return pair.matmul(x, transpose)

    @staticmethod
    def backward(ctx, g):
        return _SparseApply.apply(g.contiguous(), ctx.pair, not ctx.transpose), None, None


class _SubsetApply(torch.autograd.Function):
    """``A_S x`` for the rows ``rows`` of ``A`` (scipy row slice, CPU); backward ``A_S^T g`` (a CSC product)."""

    @staticmethod
    def forward(ctx, x, pair, rows):
        M = pair.mats[0][rows]
        ctx.M = M
        return torch.from_numpy(np.ascontiguousarray(M @ x.detach().numpy()))

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g):
        return torch.from_numpy(np.ascontiguousarray(ctx.M.T @ g.contiguous().numpy())), None, None


class Projector:
    """Parallel-beam projection ``A`` and its exact adjoint ``A^T`` for one geometry.

    Args:
        shape: image ``(H, W)``.
        theta: projection angles in degrees.
        circle: scikit-image's ``circle`` flag (detector count ``min(H, W)`` instead of the diagonal).
        device, dtype: where and in which precision the matrices live (float32 or float64).
    """

    def __init__(self, shape, theta, circle: bool = True, device=None, dtype=torch.float32):
        self._setup(make_geometry(shape, theta, circle), device, dtype)

    @classmethod
    def for_geometry(cls, geometry, device=None, dtype=torch.float32) -> "Projector":
        """The projector of a :class:`Geometry` or :class:`FanGeometry`."""
        self = cls.__new__(cls)
        self._setup(geometry, device, dtype)
        return self

    def _setup(self, geometry, device, dtype):
        self.geometry = geometry
        self.dtype = dtype
        self.device = torch.device(device if device is not None else "cpu")
        if self.device.type == "cuda" and self.device.index is None:
            self.device = torch.device("cuda", torch.cuda.current_device())
        self.pair = projection_matrices(self.geometry, dtype, self.device)

    @property
    def nnz(self) -> int:
        m = self.pair.mats[0]
        return int(m.nnz if hasattr(m, "nnz") else m.col_indices().numel())

    @property
    def sinogram_shape(self) -> tuple:
        return (self.geometry.n_angles, self.geometry.n_det)

    def _apply(self, x, transpose, in_shape, out_shape, what):
        if tuple(x.shape[-len(in_shape):]) != tuple(in_shape) or x.dim() < len(in_shape):
            raise ValueError(f"{what} must have shape (..., {', '.join(map(str, in_shape))}), got {tuple(x.shape)}")
        if x.device != self.device:
            raise ValueError(f"{what} is on {x.device} but the projector on {self.device}")
        batch = x.shape[:-len(in_shape)]
        flat = x.reshape(-1, math.prod(in_shape)).to(self.dtype).T.contiguous()
        out = _SparseApply.apply(flat, self.pair, transpose)
        return out.T.reshape(*batch, *out_shape)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """Sinogram ``(..., n_angles, n_det)`` of images ``(..., H, W)``."""
        return self._apply(image, False, self.geometry.shape, self.sinogram_shape, "image")

    __call__ = forward

    def forward_views(self, image: torch.Tensor, views) -> torch.Tensor:
        """Sinogram rows ``(..., len(views), n_det)`` of the angles ``views`` (indices into ``theta``), the
        same values as ``forward(image)[..., views, :]`` but projecting only those angles (CPU; on a GPU
        the full sinogram is projected and indexed).  First derivatives only on the CPU path."""
        views = torch.as_tensor(views, dtype=torch.long).reshape(-1)
        if self.device.type != "cpu":
            return self.forward(image)[..., views.to(self.device), :]
        shape = self.geometry.shape
        if tuple(image.shape[-2:]) != tuple(shape):
            raise ValueError(f"image must have shape (..., {shape[0]}, {shape[1]}), got {tuple(image.shape)}")
        N = self.geometry.n_det
        rows = (views[:, None] * N + torch.arange(N)[None, :]).reshape(-1).numpy()
        batch = image.shape[:-2]
        flat = image.reshape(-1, shape[0] * shape[1]).to(self.dtype).T.contiguous()
        out = _SubsetApply.apply(flat, self.pair, rows)
        return out.T.reshape(*batch, len(views), N)

    def adjoint(self, sinogram: torch.Tensor) -> torch.Tensor:
        """Back-projection ``A^T y``: images ``(..., H, W)`` of sinograms ``(..., n_angles, n_det)``."""
        return self._apply(sinogram, True, self.sinogram_shape, self.geometry.shape, "sinogram")

    def support(self) -> torch.Tensor:
        """Boolean ``(H, W)`` mask of the pixels the geometry lets be non-zero.  ``circle=True``: the
        reconstruction circle of scikit-image (``radon`` requires the image to be zero outside it and
        ``iradon`` / ``iradon_sart`` set those pixels to 0): ``(r - H//2)^2 + (c - W//2)^2 <=
        (min(H, W)//2)^2``.  ``circle=False``: every pixel."""
        H, W = self.geometry.shape
        if isinstance(self.geometry, FanGeometry):
            return torch.from_numpy(self.geometry.support()).to(self.device)
        if not self.geometry.circle:
            return torch.ones(H, W, dtype=torch.bool, device=self.device)
        r = torch.arange(H, device=self.device)[:, None] - H // 2
        c = torch.arange(W, device=self.device)[None, :] - W // 2
        return r * r + c * c <= (min(H, W) // 2) ** 2

    def norm(self, iterations: int = 30, seed: int = 0) -> float:
        """Operator 2-norm ``||A||`` by power iteration on ``A^T A``."""
        g = torch.Generator().manual_seed(seed)
        x = torch.rand(self.geometry.shape, generator=g, dtype=torch.float64).to(self.device, self.dtype)
        s = 0.0
        with torch.no_grad():
            for _ in range(iterations):
                x = self.adjoint(self.forward(x))
                s = float(torch.linalg.vector_norm(x))
                x = x / s
        return math.sqrt(s)


def radon(image: torch.Tensor, theta, circle: bool = True) -> torch.Tensor:
    """Sinogram ``(..., n_angles, n_det)`` of ``image`` ``(..., H, W)``; equals ``skimage.transform.radon``
    transposed.  Differentiable; device and dtype follow ``image`` (float64 stays float64)."""
    dtype = image.dtype if image.dtype in (torch.float32, torch.float64) else torch.float32
    P = Projector(image.shape[-2:], theta, circle, device=image.device, dtype=dtype)
    return P.forward(image)


def backproject(sinogram: torch.Tensor, theta, shape, circle: bool = True) -> torch.Tensor:
    """Adjoint of :func:`radon` (unfiltered back-projection) onto an image of ``shape``."""
    dtype = sinogram.dtype if sinogram.dtype in (torch.float32, torch.float64) else torch.float32
    P = Projector(shape, theta, circle, device=sinogram.device, dtype=dtype)
    return P.adjoint(sinogram)


def rotate_sum_radon(image: torch.Tensor, theta, circle: bool = True, chunk: int = 16) -> torch.Tensor:
    """Matrix-free reference projector: rotate with ``grid_sample`` (bilinear, zero outside) and sum
    the rows, once per angle, the way scikit-image does.  Same geometry and output as :func:`radon`;
    used to compare speed and as an independent check."""
    geom = make_geometry(image.shape[-2:], theta, circle)
    H, W = geom.shape
    N, ctr = geom.n_det, geom.n_det // 2
    o_r, o_c = geom.offset
    batch = image.shape[:-2]
    img = image.reshape(-1, 1, H, W)
    if circle:  # neighbours outside the cropped square read as zero in scikit-image
        img = img[..., o_r:o_r + N, o_c:o_c + N]
        o_r = o_c = 0
    h, w = img.shape[-2:]
    idx = torch.arange(N, dtype=img.dtype, device=img.device)
    outs = []
    for a in range(0, geom.n_angles, chunk):
        t = torch.deg2rad(torch.tensor(geom.theta[a:a + chunk], dtype=img.dtype, device=img.device))
        cos, sin = torch.cos(t)[:, None, None], torch.sin(t)[:, None, None]
        xs = cos * (idx[None, None, :] - ctr) + sin * (idx[None, :, None] - ctr) + ctr + o_c
        ys = -sin * (idx[None, None, :] - ctr) + cos * (idx[None, :, None] - ctr) + ctr + o_r
        grid = torch.stack((2 * xs / max(w - 1, 1) - 1, 2 * ys / max(h - 1, 1) - 1), -1)  # align_corners
        k = grid.shape[0]
        src = img.repeat_interleave(k, 0) if img.shape[0] > 1 else img.expand(k, -1, -1, -1)
        g = grid.repeat(img.shape[0], 1, 1, 1)
        rot = F.grid_sample(src, g, mode="bilinear", padding_mode="zeros", align_corners=True)
        outs.append(rot.sum(-2).reshape(img.shape[0], k, N))
    return torch.cat(outs, 1).reshape(*batch, geom.n_angles, N)
