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

from .config import OUTPUTS, CTConfig
from .noise import add_noise, default_mu
from inr.errors import InputError

from .radon import FanGeometry, Geometry, Projector, make_geometry, uniform_angles

# Per-family CT defaults (learning rate, TV weight, hyper-parameters such as WIRE's w0 = s0 = 10) live in
# each family's spec: inr.models.spec(name).task("ct") (docs/methods.md section 4).


def default_tv(model: str) -> float:
    """The weight of the TV term on the INR's image for ``model`` (its spec's CT defaults)."""
    return models.spec(model).task("ct").tv


DEFAULT_MODEL = "hash"


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
    """An acquisition: geometry and measured sinogram ``(views, detectors)``; a simulated one also has
    its ground truth and clean sinogram (``None`` for a measured scan)."""

    truth: np.ndarray | None
    geometry: Geometry | FanGeometry
    clean: torch.Tensor | None
    measured: torch.Tensor
    photons: float | None = None
    readout: float = 0.0
    mu: float | None = None
    info: dict = field(default_factory=dict)

    @classmethod
    def from_sinogram(cls, sinogram, geometry, truth=None) -> "Scan":
        """A measured scan: ``sinogram`` ``(views, detectors)`` in ``geometry``, ``truth`` optional."""
        from inr.errors import InputError

        y = torch.as_tensor(np.asarray(sinogram, dtype=np.float64), dtype=torch.float32)
        if tuple(y.shape) != (geometry.n_angles, geometry.n_det):
            raise InputError(f"the sinogram has shape {tuple(y.shape)}; the geometry expects "
                             f"{(geometry.n_angles, geometry.n_det)} (views, detectors)")
        return cls(None if truth is None else np.asarray(truth, dtype=np.float64), geometry, None, y)


def simulate(image: np.ndarray, views: int = 100, angle_range: float = 180.0, circle: bool = True,
             photons: float | None = None, readout: float = 0.0, peak_attenuation: float = 3.0,
             seed: int = 0) -> Scan:
    """Project ``image`` at ``views`` angles over ``[0, angle_range)`` and add the noise of
    :mod:`tomography.noise` (``photons=None``: noiseless)."""
    geom = make_geometry(np.shape(image), uniform_angles(views, angle_range), circle)
    return scan_image(image, geom, photons, readout, peak_attenuation, seed)


def scan_image(image: np.ndarray, geometry, photons: float | None = None, readout: float = 0.0,
               peak_attenuation: float = 3.0, seed: int = 0) -> Scan:
    """Project ``image`` in ``geometry`` (parallel or fan beam) and add the noise of :mod:`tomography.noise`
    (``photons=None``: noiseless).  With noise, ``scan.info`` holds the raw ``counts``."""
    P = Projector.for_geometry(geometry, dtype=torch.float64)
    clean = P.forward(torch.as_tensor(image, dtype=torch.float64))
    mu = None
    if photons is not None:
        mu = default_mu(clean, peak_attenuation)
    g = torch.Generator().manual_seed(seed)
    measured, counts = add_noise(clean, photons, readout, mu, generator=g, return_counts=True)
    info = {} if counts is None else {"counts": counts.numpy()}
    return Scan(np.asarray(image, dtype=np.float64), geometry, clean.float(), measured.float(),
                photons, readout, mu, info)


def pixel_grid(shape, device=None, dtype=torch.float32) -> torch.Tensor:
    """Pixel-centre coordinates ``(H * W, 2)`` as (row, col), each axis spanning [-1, 1], row-major."""
    H, W = shape
    ys = torch.linspace(-1, 1, H, device=device, dtype=dtype)
    xs = torch.linspace(-1, 1, W, device=device, dtype=dtype)
    return torch.stack(torch.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)


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
        # every hash-grid encoding of the model sees the same points every step: its corner indices and
        # weights are computed once (HashGridEncoding.fix_points; same values, less work per step)
        from inr.layers.hashgrid import HashGridEncoding

        first = [m for m in model.modules() if isinstance(m, HashGridEncoding)]
        body = getattr(model, "body", None)
        self.cached = bool(first) and isinstance(body, torch.nn.Sequential) and len(body) > 0 and body[0] is first[0]
        if self.cached:
            first[0].fix_points(grid)

    def _evaluate(self) -> torch.Tensor:
        return self.model(self.grid)

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
    :class:`CTImage` of a freshly built registry model (CT defaults of the family's spec under
    ``hyper``; disc support if ``mask_outside`` and the geometry is a disc)."""
    kw = models.spec(model).resolve("ct", hyper or {})
    if model == "hash" and "finest_resolution" not in kw:   # the finest level at the image's resolution
        kw["finest_resolution"] = max(scan.geometry.shape)
        kw.setdefault("base_resolution", min(16, kw["finest_resolution"]))
    net = models.build(model, 2, 1, params=params, device=device, **kw)
    P = Projector.for_geometry(scan.geometry, device=device)
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
    whichever is further along) has passed.  Applied through the public
    :meth:`inr.layers.hashgrid.HashGridEncoding.set_level_weights` of every hash-grid encoding inside
    ``model``; a masked level gets no gradient."""

    def __init__(self, model: torch.nn.Module, warm: float):
        from inr.layers.hashgrid import HashGridEncoding

        self.warm, self.alpha = float(warm), 0.0
        self.encodings = [m for m in model.modules() if isinstance(m, HashGridEncoding)]
        if not self.encodings:
            raise InputError("coarse-to-fine needs a model with a hash-grid encoding (model hash, or "
                             "encoding='hash')")
        self.update(0.0)

    def weights(self, enc) -> torch.Tensor:
        """Per-level weights ``(L,)`` at the current ``alpha``."""
        L = enc.levels
        return (self.alpha * (L - 1) - torch.arange(L, dtype=torch.float32) + 1).clamp(0, 1)

    def update(self, progress: float) -> None:
        self.alpha = 1.0 if self.warm <= 0 else min(1.0, max(0.0, progress) / self.warm)
        for enc in self.encodings:   # HashGridEncoding.set_level_weights: None once every level is fully on
            enc.set_level_weights(None if self.alpha >= 1.0 else self.weights(enc))

    def remove(self) -> None:
        for enc in self.encodings:
            enc.set_level_weights(None)


def _fingerprint(scan: Scan, img: CTImage, output: str, mask_outside: bool, extra: dict | None = None) -> str:
    import hashlib
    import json

    digest = hashlib.sha256(scan.measured.detach().cpu().numpy().tobytes()).hexdigest()
    return json.dumps({"sinogram_sha256": digest, "model": img.model.config, "output": output,
                       "mask_outside": mask_outside, **(extra or {})}, sort_keys=True, default=str)


def reconstruct_inr(scan: Scan, config: CTConfig | None = None, *, checkpoint_path: str | None = None,
                    hyper: dict | None = None, tv_eps: float = 1e-3):
    """Fit a registry model to ``scan.measured`` with the INR options of ``config`` (a
    :class:`tomography.config.CTConfig`; default ``CTConfig()``; its baseline options are not used here).

    Returns ``(image, result, net)``: the final iterate as an (H, W) numpy array, the
    :class:`inr.train.FitResult` (history holds the sinogram loss and, as monitoring only, the image
    PSNR against the truth and the best PSNR seen so far, labelled oracle), and the trained
    :class:`CTImage`.  ``config.mask_outside`` (circle geometry only): pixels no ray passes through are
    fixed at 0 and not modelled, as FBP and SART do (see :class:`CTImage`).

    ``checkpoint_path`` with ``config.checkpoint_every`` / ``config.resume``: the training loop's
    checkpointing (:class:`inr.train.TrainConfig`); a checkpoint is only resumed for the same measured
    sinogram and model (fingerprint), and the resumed run ends with the same weights as an uninterrupted one.

    ``config.inr_tv``: weight of the smoothed total-variation term :func:`tv_penalty` (``tv_eps``) added to
    the (peak-scaled) sinogram loss (0: none; None: the model's spec, :func:`default_tv`).
    ``config.view_batch``: project only this many angles per step, drawn uniformly without replacement from a
    generator seeded by ``config.seed`` (:func:`view_subset_loss`, an unbiased estimate of the full loss);
    None or >= the number of views: all of them.  ``config.coarse_to_fine`` (hash-grid encodings only):
    fraction of the budget over which the finer levels are switched on (:class:`LevelSchedule`; 0: all
    levels from the start).  ``config.lbfgs``: the L-BFGS stage's ``lbfgs_*`` keywords of
    :class:`inr.train.TrainConfig` (off by default); its loss always uses every view.  ``hyper``: the
    model's hyper-parameters over its spec's CT defaults.
    """
    c = config if config is not None else CTConfig()
    model, steps, seconds, seed, output, mask_outside = c.model, c.steps, c.seconds, c.seed, c.output, c.mask_outside
    coarse_to_fine = c.coarse_to_fine
    dev = resolve_device(c.device)
    seed_everything(seed)
    hyper = c.hyper if hyper is None else hyper      # the config's model hyper-parameters unless given here
    img, P, y = inr_problem(scan, model, c.params, output, dev, hyper, mask_outside)
    scale = float(y.abs().max()) or 1.0
    truth = None if scan.truth is None else torch.as_tensor(scan.truth, dtype=torch.float32, device=dev)
    best = {"psnr": -math.inf}

    tv = default_tv(model) if c.inr_tv is None else float(c.inr_tv)
    n_views = scan.geometry.n_angles
    k = None if not c.view_batch or c.view_batch >= n_views else int(c.view_batch)
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
        if truth is None:
            return loss, {}
        with torch.no_grad():
            p = psnr_from_mse(float(torch.mean((x.clamp(0, 1) - truth) ** 2)))
        best["psnr"] = max(best["psnr"], p)
        return loss, {"psnr": p, "oracle_best_psnr": best["psnr"]}

    cfg = TrainConfig(steps=steps, seconds=seconds, lr=c.lr if c.lr is not None else models.spec(model).task("ct").lr,
                      lr_final=0.1, schedule="exponential", seed=seed, device=str(dev), quiet=c.quiet,
                      log_every=c.log_every, desc=f"ct {model}", checkpoint_every=int(c.checkpoint_every),
                      checkpoint_path=checkpoint_path, resume=c.resume,
                      fingerprint=_fingerprint(scan, img, output, mask_outside,
                                                {"tv": tv, "view_batch": k, "coarse_to_fine": coarse_to_fine}
                                                if (tv or k or coarse_to_fine) else None),
                      **(c.lbfgs or {}))
    result: FitResult = fit(img, loss_fn, cfg, lbfgs_loss=lambda step: loss_fn(step, all_views=True), extra_state=(
        lambda: {"best_psnr": best["psnr"], "views_rng": gen.get_state()},
        lambda d: (best.update(psnr=float(d["best_psnr"])), gen.set_state(d["views_rng"]) if "views_rng" in d else None)))
    if levels is not None:
        levels.update(1.0)
    with torch.no_grad():
        final = img().double().cpu().numpy()
    return final, result, img
