"""Test objects for the CT study: scikit-image's Shepp-Logan phantom and an analytic thorax-like slice.

The thorax (:func:`thorax`) is drawn from ellipses (and thin rotated ellipses for vessels) in
normalised coordinates ``(x, y)`` in ``[-1, 1]^2`` (``x`` the column, ``y`` the row, anterior at the
top), painted in order (a later shape replaces what is under it), supersampled ``ss x ss`` per pixel
and box-averaged, so edges are anti-aliased and the image does not depend on anything but
``(size, seed, ss)``.  Values in [0, 1] (air 0, lung ~0.08, fat 0.42, soft tissue 0.52, blood 0.6,
bone up to 1).  Every shape lies inside the inscribed disc (radius 0.93), so the object is zero where
the ``circle=True`` geometry does not scan.

Structures: body outline (fat layer around a muscle/soft-tissue ellipse), two lungs with a seeded
texture of vessels (thin segments fanning out from each hilum and small round cross-sections, finer
towards the periphery), heart with a brighter ventricle, descending aorta, vertebral body with its
canal and posterior arch, sternum, and pairs of ribs along the chest wall.
"""
from __future__ import annotations

import math

import numpy as np
from inr.errors import InputError

AIR, LUNG, FAT, SOFT, BLOOD, VESSEL, BONE, CORTEX = 0.0, 0.08, 0.42, 0.52, 0.62, 0.45, 0.85, 1.0
PHANTOMS = ("shepp", "thorax")


def shepp_logan(size=(256, 256)) -> np.ndarray:
    """scikit-image's Shepp-Logan phantom (400 x 400), resized to ``size``, values in [0, 1]."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return np.clip(resize(shepp_logan_phantom(), tuple(size)), 0.0, 1.0)


class _Canvas:
    """A supersampled image in normalised coordinates; shapes are painted inside their bounding box."""

    def __init__(self, size, ss):
        H, W = size
        self.H, self.W, self.ss = H * ss, W * ss, ss
        self.img = np.zeros((self.H, self.W))
        # pixel-centre coordinates of the fine grid, spanning [-1, 1] like tomography.recon.pixel_grid
        # does for the coarse one (fine centres offset inside each coarse pixel)
        self.ys = ((np.arange(self.H) + 0.5) / ss - 0.5) * 2 / max(H - 1, 1) - 1
        self.xs = ((np.arange(self.W) + 0.5) / ss - 0.5) * 2 / max(W - 1, 1) - 1

    def mask(self, cx, cy, a, b, angle=0.0):
        """Boolean mask of the ellipse (semi-axes a along the rotated x, b along y; angle in radians)
        restricted to its bounding box: returns ``(rows slice, cols slice, mask)``."""
        r = max(a, b)
        r0, r1 = np.searchsorted(self.ys, cy - r), np.searchsorted(self.ys, cy + r, side="right")
        c0, c1 = np.searchsorted(self.xs, cx - r), np.searchsorted(self.xs, cx + r, side="right")
        if r0 >= r1 or c0 >= c1:
            return slice(0, 0), slice(0, 0), np.zeros((0, 0), bool)
        dy = self.ys[r0:r1, None] - cy
        dx = self.xs[None, c0:c1] - cx
        c, s = math.cos(angle), math.sin(angle)
        u, v = c * dx + s * dy, -s * dx + c * dy
        return slice(r0, r1), slice(c0, c1), (u / a) ** 2 + (v / b) ** 2 <= 1.0

    def paint(self, value, cx, cy, a, b, angle=0.0, within=None):
        rs, cs, m = self.mask(cx, cy, a, b, angle)
        if within is not None:
            m = m & within[rs, cs]
        self.img[rs, cs][m] = value  # basic slices: a view, so this writes into img
        return m

    def full_mask(self, cx, cy, a, b, angle=0.0):
        out = np.zeros((self.H, self.W), bool)
        rs, cs, m = self.mask(cx, cy, a, b, angle)
        out[rs, cs] = m
        return out

    def result(self):
        H, W, ss = self.H // self.ss, self.W // self.ss, self.ss
        return self.img.reshape(H, ss, W, ss).mean(axis=(1, 3))


def thorax(size=(256, 256), seed: int = 0, ss: int = 4) -> np.ndarray:
    """Analytic axial chest slice (module docstring), float64 ``size`` image in [0, 1], deterministic in
    ``(size, seed, ss)``; ``seed`` only moves the vessel texture."""
    size = tuple(int(s) for s in (size if np.ndim(size) else (size, size)))
    rng = np.random.default_rng(seed)
    cv = _Canvas(size, int(ss))
    # body: fat layer, then soft tissue / muscle
    cv.paint(FAT, 0.0, 0.02, 0.90, 0.66)
    cv.paint(SOFT, 0.0, 0.02, 0.84, 0.60)
    # ribs along the chest wall (pairs of small bone ellipses, cortex then marrow), before the lungs
    for side in (-1, 1):
        for k, t in enumerate(np.linspace(0.35, 2.75, 7)):
            cx, cy = side * 0.80 * math.sin(t), 0.02 - 0.56 * math.cos(t)
            ang = side * t
            cv.paint(CORTEX, cx, cy, 0.045, 0.022, ang)
            cv.paint(BONE - 0.1, cx, cy, 0.028, 0.010, ang)
    # lungs
    lungs = []
    for side in (-1, 1):
        cx, cy = side * 0.40, -0.04
        lungs.append((cx, cy))
        cv.paint(LUNG, cx, cy, 0.30, 0.46, side * 0.10)
    lung_mask = cv.img == LUNG
    # vessels: segments fanning out of each hilum, thinner and fainter towards the periphery
    for (lx, ly), side in zip(lungs, (-1, 1)):
        hx, hy = lx - side * 0.16, ly + 0.02          # hilum on the medial side
        for _ in range(90):
            ang = rng.uniform(-math.pi, math.pi)
            dist = rng.uniform(0.03, 0.42)
            length = rng.uniform(0.03, 0.10) * (1.2 - dist)
            width = max(0.004, 0.014 * (1.0 - dist / 0.5)) * rng.uniform(0.7, 1.3)
            cx, cy = hx + dist * math.cos(ang) * 0.85, hy + dist * math.sin(ang) * 1.1
            value = VESSEL * rng.uniform(0.75, 1.1)
            cv.paint(value, cx, cy, length, width, ang + rng.normal(0, 0.25), within=lung_mask)
        for _ in range(70):  # vessels seen end-on
            r = rng.uniform(0.004, 0.012)
            cx, cy = lx + rng.uniform(-0.28, 0.28), ly + rng.uniform(-0.44, 0.44)
            cv.paint(VESSEL * rng.uniform(0.8, 1.1), cx, cy, r, r, within=lung_mask)
    # mediastinum: heart (myocardium and a brighter ventricle), descending aorta
    cv.paint(SOFT + 0.04, 0.08, 0.02, 0.24, 0.20, -0.5)
    cv.paint(BLOOD, 0.12, 0.03, 0.13, 0.10, -0.5)
    cv.paint(BLOOD + 0.03, -0.07, 0.26, 0.055, 0.055)
    # spine: vertebral body (cortex, cancellous bone), canal, posterior arch with spinous process
    cv.paint(CORTEX, 0.0, 0.40, 0.12, 0.10)
    cv.paint(BONE - 0.1, 0.0, 0.40, 0.095, 0.078)
    cv.paint(CORTEX, 0.0, 0.57, 0.10, 0.05)
    cv.paint(CORTEX, 0.0, 0.64, 0.025, 0.06)
    cv.paint(SOFT - 0.02, 0.0, 0.545, 0.05, 0.04)
    # sternum
    cv.paint(CORTEX, 0.0, -0.53, 0.07, 0.03)
    cv.paint(BONE - 0.1, 0.0, -0.53, 0.05, 0.018)
    return np.clip(cv.result(), 0.0, 1.0)


def make(name: str, size=(256, 256), seed: int = 0) -> np.ndarray:
    """The phantom ``name`` (``shepp`` or ``thorax``) at ``size``."""
    if name == "shepp":
        return shepp_logan(size)
    if name == "thorax":
        return thorax(size, seed)
    raise InputError(f"unknown phantom {name!r}; choose from {', '.join(PHANTOMS)}")
