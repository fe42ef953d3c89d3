"""Sparse-view CT with an implicit neural representation (docs/methods.md section 4).

The image is ``model(grid)`` on the pixel centres (coordinates in [-1, 1] per axis); the loss is the
mean squared difference between its projection and the measured sinogram, divided by the squared
peak of the measurement (a constant, so only the scale of the logged loss changes); one
:func:`inr.train.fit` loop does the rest.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from inr import models
from inr.metrics import psnr_from_mse
from inr.train import FitResult, TrainConfig, fit, resolve_device, seed_everything

from .noise import add_noise, default_mu
from .radon import Geometry, Projector, uniform_angles
from inr.errors import InputError

# Learning rates per family (docs/methods.md section 4: WIRE 5e-3, SIREN/Gauss 1e-3..2e-3, ReLU+PE 5e-4..1e-3).
# LRNN: 5e-3 from one probe (Shepp-Logan 64x64, 25 views, 240 s CPU budget): 17.9 dB vs 14.4 dB at 1e-3.
DEFAULT_LR = {"siren": 1e-3, "spder": 1e-3, "gauss": 2e-3, "wire": 5e-3, "relu-pe": 1e-3,
              "lrnn-siren": 5e-3, "lrnn-spder": 5e-3, "hash": 1e-2}
# Weight of the INR's total-variation term (tv_penalty) per model; families not listed get none.
DEFAULT_TV = {"hash": 1e-4}
DEFAULT_MODEL = "hash"
# CT-specific hyper-parameters (WIRE uses w0 = s0 = 10 for CT)
DEFAULT_HYPER = {"wire": {"w0": 10.0, "s0": 10.0}}
OUTPUTS = ("linear", "sigmoid")


def load_image(path: str | os.PathLike, size=None) -> np.ndarray:
    """Grayscale float64 image in [0, 1], read by :func:`inr.signals.load` (its pixel limit and 16-bit
    decoding; values scaled by the format's maximum, float images taken as they are); colour is averaged
    to gray and alpha dropped; ``size`` ``(H, W)`` resizes (anti-aliased)."""
    from skimage.transform import resize

    from inr.signals import SignalError, load

    path = os.fspath(path)
    if not os.path.isfile(path):
        raise InputError(f"image file not found: {path}")
    try:
        sig = load(path)
    except SignalError as e:
        detail = " ".join(str(e).split())
        if "2-D" in detail:
            raise InputError(f"cannot read {path}: expected a 2-D grayscale or RGB image ({detail})") from None
        raise InputError(f"cannot read {path} as an image ({detail})") from None
    if sig.kind != "image":
        raise InputError(f"{path}: expected a 2-D grayscale or RGB image, got {sig.kind}")
    v = sig.values                       # (H, W, C) in [0, 1]
    c = v.shape[2]
    img = v[..., :3].mean(-1) if c >= 3 else v[..., 0]
    if img.max() <= img.min():
        raise InputError(f"{path}: image is constant; nothing to reconstruct")
    if size is not None:
        img = np.clip(resize(img, tuple(size), anti_aliasing=True), 0.0, 1.0)
    return np.ascontiguousarray(img, dtype=np.float64)


def phantom(size=(256, 256)) -> np.ndarray:
    """scikit-image's Shepp-Logan phantom (400 x 400), resized to ``size``, values in [0, 1]."""
    from skimage.data import shepp_logan_phantom
    from skimage.transform import resize

    return np.clip(resize(shepp_logan_phantom(), tuple(size)), 0.0, 1.0)


@dataclass
class Scan:
    """A simulated acquisition: ground truth, geometry, clean and measured sinograms."""

    truth: np.ndarray
    geometry: Geometry
    clean: torch.Tensor
    measured: torch.Tensor
    photons: float | None = None
    readout: float = 0.0
    mu: float | None = None
    info: dict = field(default_factory=dict)


def simulate(image: np.ndarray, views: int = 100, angle_range: float = 180.0, circle: bool = True,
             photons: float | None = None, readout: float = 0.0, peak_attenuation: float = 3.0,
             seed: int = 0) -> Scan:
    """Project ``image`` at ``views`` angles over ``[0, angle_range)`` and add the noise of
    :mod:`tomography.noise` (``photons=None``: noiseless)."""
    theta = uniform_angles(views, angle_range)
    P = Projector(image.shape, theta, circle, dtype=torch.float64)
    clean = P.forward(torch.as_tensor(image, dtype=torch.float64))
    mu = None
    if photons is not None:
        mu = default_mu(clean, peak_attenuation)
    g = torch.Generator().manual_seed(seed)
    measured = add_noise(clean, photons, readout, mu, generator=g)
    return Scan(np.asarray(image, dtype=np.float64), P.geometry, clean.float(), measured.float(),
                photons, readout, mu)


def pixel_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates ``(H * W, 2)`` as (row, col), each axis spanning [-1, 1], row-major."""
    H, W = shape
    ys = torch.linspace(-1, 1, H, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, W, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


class _FixedGridHash(torch.autograd.Function):
    """A hash-grid encoding at fixed points: ``(table, idx, wts) -> (B, L F)`` from corner indices and
    weights computed once (:class:`CTImage`); backward scatters into the table (as
    :class:`inr.layers.hashgrid.HashGridFn` does), no input gradient."""

    @staticmethod
    def forward(ctx, table, idx, wts):
        from inr.layers.hashgrid import _interpolate

        ctx.save_for_backward(idx, wts)
        ctx.table_shape = table.shape
        return _interpolate(idx, wts, table)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad):
        idx, wts = ctx.saved_tensors
        L, B, C = idx.shape
        F = ctx.table_shape[1]
        g = grad.reshape(B, L, F).permute(2, 1, 0)[..., None]  # (F, L, B, 1)
        out = torch.zeros(ctx.table_shape, dtype=grad.dtype, device=grad.device)
        flat = idx.reshape(-1)
        for f in range(F):
            out[:, f].scatter_add_(0, flat, (wts * g[f]).reshape(-1))
        return out, None, None


class CTImage(torch.nn.Module):
    """``model(grid)`` reshaped to the image, through an optional output map (``sigmoid`` keeps values
    in (0, 1), the known range of the normalised images).

    ``support`` (a boolean ``(H, W)`` mask, e.g. :meth:`Projector.support`): the model is evaluated
    only on those pixels and the others are 0, as FBP and SART set the pixels outside the scanned
    disc.  No ray constrains those pixels, so an unmasked INR leaves arbitrary values there; skipping
    them also saves the model ~21% of its work on a disc.
    """

    def __init__(self, model: torch.nn.Module, shape, output: str = "linear", support=None):
        super().__init__()
        if output not in OUTPUTS:
            raise InputError(f"--output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        self.model, self.shape, self.output = model, tuple(shape), output
        p = next(model.parameters())
        grid = pixel_grid(shape, device=p.device, dtype=torch.float32)
        if support is not None:
            support = torch.as_tensor(support, dtype=torch.bool, device=p.device)
            if tuple(support.shape) != self.shape:
                raise InputError(f"support mask has shape {tuple(support.shape)}, image {self.shape}")
            self.register_buffer("index", support.reshape(-1).nonzero().squeeze(1))
            grid = grid[self.index]
        else:
            self.index = None
        self.register_buffer("grid", grid)
        # a hash-grid encoding first in the body sees the same points every step: its corner indices and
        # weights are computed once here instead of on every forward (same values, less work per step)
        from inr.layers.hashgrid import HashGridEncoding

        body = getattr(model, "body", None)
        self.cached = (isinstance(body, torch.nn.Sequential) and len(body) > 0
                       and isinstance(body[0], HashGridEncoding) and hasattr(model, "head"))
        if self.cached:
            enc = body[0]
            with torch.no_grad():
                c, w = enc.positions(grid)
                idx, wts = enc.corners(c, w)
            self.register_buffer("hash_idx", idx, persistent=False)
            self.register_buffer("hash_wts", wts.to(enc.embeddings.dtype), persistent=False)

    def _evaluate(self) -> torch.Tensor:
        if not self.cached:
            return self.model(self.grid)
        body = self.model.body
        enc = body[0]
        h = _FixedGridHash.apply(enc.embeddings, self.hash_idx, self.hash_wts)
        for hook in enc._forward_hooks.values():   # e.g. LevelSchedule
            r = hook(enc, (self.grid,), h)
            h = h if r is None else r
        y = self.model.head(body[1:](h))
        return y.real if getattr(self.model, "complex_out", False) else y

    def forward(self) -> torch.Tensor:
        y = self._evaluate().reshape(-1)
        if self.output == "sigmoid":
            y = torch.sigmoid(y)
        if self.index is None:
            return y.reshape(self.shape)
        return y.new_zeros(self.shape[0] * self.shape[1]).index_copy(0, self.index, y).reshape(self.shape)


def inr_problem(scan: Scan, model: str, params: int | None = 180_000, output: str = "linear", device="cpu",
                hyper: dict | None = None, mask_outside: bool = True):
    """The pieces of an INR reconstruction on ``device``: ``(img, projector, measured)`` with ``img`` the
    :class:`CTImage` of a freshly built registry model (CT defaults of :data:`DEFAULT_HYPER` under
    ``hyper``; disc support if ``mask_outside`` and the geometry is a disc)."""
    kw = {**DEFAULT_HYPER.get(model, {}), **(hyper or {})}
    if model == "hash" and "finest_resolution" not in kw:   # the finest level at the image's resolution
        kw["finest_resolution"] = max(scan.geometry.shape)
        kw.setdefault("base_resolution", min(16, kw["finest_resolution"]))
    net = models.build(model, 2, 1, params=params, device=device, **kw)
    P = Projector(scan.geometry.shape, scan.geometry.theta, scan.geometry.circle, device=device)
    support = P.support() if scan.geometry.circle and mask_outside else None
    return CTImage(net, scan.geometry.shape, output, support).to(device), P, scan.measured.to(device)


def tv_penalty(x: torch.Tensor, eps: float = 1e-3) -> torch.Tensor:
    """Smoothed isotropic total variation per pixel, ``mean_ij sqrt(dx_ij^2 + dy_ij^2 + eps^2) - eps``,
    forward differences with the last row / column repeated (Neumann), so a constant image costs 0.
    ``eps`` (in image units per pixel) rounds the kink at zero so the gradient exists everywhere."""
    dx = torch.nn.functional.pad(x[..., :, 1:] - x[..., :, :-1], (0, 1))
    dy = torch.nn.functional.pad(x[..., 1:, :] - x[..., :-1, :], (0, 0, 0, 1))
    return torch.mean(torch.sqrt(dx * dx + dy * dy + eps * eps)) - eps


def view_subset_loss(P: Projector, x: torch.Tensor, y: torch.Tensor, views) -> torch.Tensor:
    """``mean((A_S x - y_S)^2)`` over the sinogram rows of the angles ``views`` (indices into the
    geometry's angles), projecting only those angles.  With ``views`` a uniformly random k-subset of
    the n angles this is an unbiased estimate of the full loss ``mean((A x - y)^2)``: each angle is in
    the subset with probability k / n and the mean divides by k angles' worth of rows."""
    views = torch.as_tensor(views, dtype=torch.long)
    return torch.mean((P.forward_views(x, views) - y[views.to(y.device)]) ** 2)


class LevelSchedule:
    """Coarse-to-fine for hash-grid encodings: the features of level ``l`` (of ``L``) are multiplied by
    ``clip(a (L - 1) - l + 1, 0, 1)`` with ``a = min(1, progress / warm)``, so only the coarsest level
    is on at the start and the finest is fully on once ``warm`` of the budget (steps or wall time,
    whichever is further along) has passed.  Applied as a forward hook on every
    :class:`inr.layers.hashgrid.HashGridEncoding` inside ``model``; a masked level gets no gradient."""

    def __init__(self, model: torch.nn.Module, warm: float):
        from inr.layers.hashgrid import HashGridEncoding

        self.warm, self.alpha = float(warm), 0.0
        self.encodings = [m for m in model.modules() if isinstance(m, HashGridEncoding)]
        if not self.encodings:
            raise InputError("coarse-to-fine needs a model with a hash-grid encoding (model hash, or "
                             "encoding='hash')")
        self.handles = [m.register_forward_hook(self._hook) for m in self.encodings]

    def weights(self, enc) -> torch.Tensor:
        L = enc.levels
        w = (self.alpha * (L - 1) - torch.arange(L, dtype=torch.float32) + 1).clamp(0, 1)
        return w.repeat_interleave(enc.features)

    def _hook(self, module, inputs, out):
        if self.alpha >= 1.0:
            return out
        return out * self.weights(module).to(out.device, out.dtype)

    def update(self, progress: float) -> None:
        self.alpha = 1.0 if self.warm <= 0 else min(1.0, max(0.0, progress) / self.warm)

    def remove(self) -> None:
        for h in self.handles:
            h.remove()


def _fingerprint(scan: Scan, img: CTImage, output: str, mask_outside: bool, extra: dict | None = None) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(scan.measured.detach().cpu().numpy().tobytes()).hexdigest()
    return json.dumps({"sinogram_sha256": digest, "model": img.model.config, "output": output,
                       "mask_outside": mask_outside, **(extra or {})}, sort_keys=True, default=str)


def reconstruct_inr(scan: Scan, model: str = "lrnn-siren", params: int | None = 180_000, steps: int = 5000,
                    seconds: float | None = None, lr: float | None = None, output: str = "linear",
                    seed: int = 0, device="auto", quiet: bool = False, log_every: int = 10,
                    hyper: dict | None = None, mask_outside: bool = True, checkpoint_path: str | None = None,
                    checkpoint_every: int = 0, resume: bool = False, tv: float | None = None, view_batch: int | None = None,
                    tv_eps: float = 1e-3, coarse_to_fine: float = 0.0, lbfgs: dict | None = None):
    """Fit a registry model to ``scan.measured``.

    Returns ``(image, result, net)``: the final iterate as an (H, W) numpy array, the
    :class:`inr.train.FitResult` (history holds the sinogram loss and, as monitoring only, the image
    PSNR against the truth and the best PSNR seen so far, labelled oracle), and the trained
    :class:`CTImage`.  ``mask_outside`` (circle geometry only): pixels no ray passes through are
    fixed at 0 and not modelled, as FBP and SART do (see :class:`CTImage`).

    ``checkpoint_path`` / ``checkpoint_every`` / ``resume``: the training loop's checkpointing
    (:class:`inr.train.TrainConfig`); a checkpoint is only resumed for the same measured sinogram and
    model (fingerprint), and the resumed run ends with the same weights as an uninterrupted one.

    ``tv``: weight of the smoothed total-variation term :func:`tv_penalty` added to the (peak-scaled)
    sinogram loss (0: none; None: the model's :data:`DEFAULT_TV`).  ``view_batch``: project only this many angles per step, drawn uniformly
    without replacement from a generator seeded by ``seed`` (:func:`view_subset_loss`, an unbiased
    estimate of the full loss); None or >= the number of views: all of them.  ``coarse_to_fine``
    (hash-grid encodings only): fraction of the budget over which the finer levels are switched on
    (:class:`LevelSchedule`; 0: all levels from the start).  ``lbfgs``: the L-BFGS stage's ``lbfgs_*``
    keywords of :class:`inr.train.TrainConfig` (off by default); its loss always uses every view.
    """
    dev = resolve_device(device)
    seed_everything(seed)
    img, P, y = inr_problem(scan, model, params, output, dev, hyper, mask_outside)
    scale = float(y.abs().max()) or 1.0
    truth = torch.as_tensor(scan.truth, dtype=torch.float32, device=dev)
    best = {"psnr": -math.inf}

    tv = DEFAULT_TV.get(model, 0.0) if tv is None else float(tv)
    n_views = scan.geometry.n_angles
    k = None if not view_batch or view_batch >= n_views else int(view_batch)
    gen = torch.Generator().manual_seed(int(seed) + 7919)
    levels = LevelSchedule(img, coarse_to_fine) if coarse_to_fine else None
    t_start = time.perf_counter()

    def loss_fn(step, all_views: bool = False):
        if levels is not None:
            prog = step / max(steps, 1)
            if seconds:
                prog = max(prog, (time.perf_counter() - t_start) / seconds)
            levels.update(prog)
        x = img()
        if k is None or all_views:
            loss = torch.mean((P.forward(x) - y) ** 2) / scale ** 2
        else:
            loss = view_subset_loss(P, x, y, torch.randperm(n_views, generator=gen)[:k]) / scale ** 2
        if tv:
            loss = loss + tv * tv_penalty(x, tv_eps)
        with torch.no_grad():
            p = psnr_from_mse(float(torch.mean((x.clamp(0, 1) - truth) ** 2)))
        best["psnr"] = max(best["psnr"], p)
        return loss, {"psnr": p, "oracle_best_psnr": best["psnr"]}

    cfg = TrainConfig(steps=steps, seconds=seconds, lr=lr if lr is not None else DEFAULT_LR.get(model, 1e-3),
                      lr_final=0.1, schedule="exponential", seed=seed, device=str(dev), quiet=quiet,
                      log_every=log_every, desc=f"ct {model}", checkpoint_every=int(checkpoint_every),
                      checkpoint_path=checkpoint_path, resume=resume,
                      fingerprint=_fingerprint(scan, img, output, mask_outside,
                                                {"tv": tv, "view_batch": k, "coarse_to_fine": coarse_to_fine}
                                                if (tv or k or coarse_to_fine) else None),
                      **(lbfgs or {}))
    result: FitResult = fit(img, loss_fn, cfg, lbfgs_loss=lambda step: loss_fn(step, all_views=True), extra_state=(
        lambda: {"best_psnr": best["psnr"], "views_rng": gen.get_state()},
        lambda d: (best.update(psnr=float(d["best_psnr"])), gen.set_state(d["views_rng"]) if "views_rng" in d else None)))
    if levels is not None:
        levels.update(1.0)
    with torch.no_grad():
        final = img().double().cpu().numpy()
    return final, result, img
