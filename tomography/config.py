"""Every CT option checked once, where it is made (``__post_init__``), before anything is allocated.

- :class:`ScanSpec`: how a scan was (or is to be) acquired: image size, views and angle range, parallel
  or fan-beam geometry, simulated noise.
- :class:`CTConfig`: how it is reconstructed: the INR (model, budget, training), the baselines, and the
  memory limit.  :meth:`CTConfig.check_memory` estimates the memory a reconstruction needs from the
  geometry and the model budget (projection matrix non-zeros ~ views x detectors x image side, model
  parameters with their Adam state, activations) and refuses it above the limit, with the estimate.

A bad value raises :class:`inr.errors.InputError` naming the command-line option.  Ranges:

==================  ==============================================================
size                8 to 8192 pixels per side
views               1 to 20,000
detectors           2 to 65,536
angle range         (0, 360] degrees
params              1 to 50,000,000
steps               0 to 10^9;  seconds > 0
memory limit        ``--max-memory`` GB (default 4, or ``$INR_MAX_MEMORY_GB``)
==================  ==============================================================
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from inr.errors import InputError

MIN_SIZE = 8        # SSIM (7 x 7 window) and a meaningful scan need at least 8 x 8 pixels
MAX_SIZE = 8192
MAX_VIEWS = 20_000
MAX_DETECTORS = 65_536
MAX_PARAMS = 50_000_000
MAX_STEPS = 10 ** 9
MAX_ITERATIONS = 100_000
DEFAULT_MAX_MEMORY_GB = 4.0
GEOMETRIES = ("parallel", "fan")
OUTPUTS = ("linear", "sigmoid")   # the INR image's output map (tomography.recon.CTImage)


def _finite(v) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(name, v, lo, hi, none=False):
    if v is None and none:
        return
    if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
        raise InputError(f"{name} must be an integer from {lo:,} to {hi:,}, got {v!r}")


def _num(name, v, lo=None, hi=None, *, low_open=False, none=False):
    if v is None and none:
        return
    ok = _finite(v) and (lo is None or (v > lo if low_open else v >= lo)) and (hi is None or v <= hi)
    if not ok:
        rng = (f" {'>' if low_open else '>='} {lo:g}" if lo is not None else "") + \
              (f"{' and' if lo is not None else ''} <= {hi:g}" if hi is not None else "")
        raise InputError(f"{name} must be a finite number{rng}, got {v!r}")


def default_max_memory_gb() -> float:
    env = os.environ.get("INR_MAX_MEMORY_GB")
    if not env:
        return DEFAULT_MAX_MEMORY_GB
    try:
        v = float(env)
    except ValueError:
        v = float("nan")
    if not (math.isfinite(v) and v > 0):
        raise InputError(f"INR_MAX_MEMORY_GB must be a positive number of GB, got {env!r}")
    return v


@dataclass
class ScanSpec:
    """Acquisition options (module docstring for the ranges); lengths of the fan beam in pixels.

    ``size`` ``(H, W)`` or None (the image's own size); ``geometry`` parallel or fan; fan-beam
    ``source_distance`` / ``detector_distance`` / ``pitch`` / ``detectors`` None: the defaults of
    :func:`tomography.radon.fan_geometry`."""

    size: tuple | None = None
    views: int = 100
    angle_range: float | None = None     # None: 180 (parallel) or 360 (fan) degrees
    full_field: bool = False
    geometry: str = "parallel"
    source_distance: float | None = None
    detector_distance: float | None = None
    pitch: float | None = None
    det_offset: float = 0.0
    detectors: int | None = None
    photons: float | None = None
    readout: float = 0.0
    peak_attenuation: float = 3.0

    def __post_init__(self):
        if self.size is not None:
            size = tuple(self.size)
            if len(size) != 2 or any(isinstance(s, bool) or not isinstance(s, int) for s in size) \
                    or not all(MIN_SIZE <= s <= MAX_SIZE for s in size):
                raise InputError(f"--size must be N or HxW with sides from {MIN_SIZE} to {MAX_SIZE}, got {self.size!r}")
            self.size = size
        _int("--views", self.views, 1, MAX_VIEWS)
        _num("--angle-range", self.angle_range, 0, 360, low_open=True, none=True)
        if self.geometry not in GEOMETRIES:
            raise InputError(f"--geometry must be one of {', '.join(GEOMETRIES)}, got {self.geometry!r}")
        for name, v in (("--source-distance", self.source_distance), ("--detector-distance", self.detector_distance),
                        ("--detector-pitch", self.pitch)):
            _num(name, v, 0, 1e9, low_open=True, none=True)
        _num("--detector-offset", self.det_offset, -1e9, 1e9)
        _int("--detectors", self.detectors, 2, MAX_DETECTORS, none=True)
        if self.geometry == "parallel" and any(v is not None for v in (self.source_distance, self.detector_distance,
                                                                      self.pitch)):
            raise InputError("--source-distance, --detector-distance and --detector-pitch need --geometry fan")
        _num("--photons", self.photons, 0, 1e18, low_open=True, none=True)
        _num("--readout-noise", self.readout, 0, 1e12)
        _num("--peak-attenuation", self.peak_attenuation, 0, 50, low_open=True)
        if self.readout and self.photons is None:
            raise InputError("--readout-noise is a standard deviation in detector counts and needs --photons")

    @property
    def range(self) -> float:
        if self.angle_range is not None:
            return float(self.angle_range)
        return 360.0 if self.geometry == "fan" else 180.0

    def make_geometry(self, shape, theta=None, n_det: int | None = None):
        """The geometry for an image of ``shape`` at ``theta`` (default: :attr:`views` uniform angles over
        :attr:`range`); ``n_det`` (a measured sinogram's width) fixes the detector count."""
        from .radon import fan_geometry, make_geometry, uniform_angles

        theta = uniform_angles(self.views, self.range) if theta is None else theta
        if self.geometry == "fan":
            n = n_det if n_det is not None else self.detectors
            return fan_geometry(shape, theta, self.source_distance, self.detector_distance, n, self.pitch,
                                self.det_offset, not self.full_field)
        geom = make_geometry(shape, theta, not self.full_field)
        if n_det is not None and geom.n_det != n_det:
            side = "the image diagonal (--full-field)" if self.full_field else "the image side"
            raise InputError(f"--sinogram has {n_det} detector bins but a parallel-beam scan of a {shape[0]}x{shape[1]} "
                             f"image has {geom.n_det} (the detector spans {side}); give a matching --size")
        return geom


@dataclass
class CTConfig:
    """Reconstruction options (module docstring for the ranges).  ``box``: the known value range of the
    image (SART and TV clip to it; the scores clip to it); ``baselines``: also run FBP, SART and TV;
    ``lbfgs``: :class:`inr.train.TrainConfig`'s ``lbfgs_*`` keywords; ``max_memory_gb``: refuse a
    reconstruction whose estimate (:meth:`check_memory`) is larger (None: ``$INR_MAX_MEMORY_GB`` or 4)."""

    model: str = "hash"
    params: int | None = 180_000
    steps: int = 5000
    seconds: float | None = None
    lr: float | None = None
    output: str = "linear"
    inr_tv: float | None = None
    view_batch: int | None = None
    coarse_to_fine: float = 0.0
    mask_outside: bool = True
    fbp_filter: str = "ramp"
    sart_iterations: int = 10
    tv_weight: float = 3e-4
    tv_iterations: int = 300
    baselines: bool = True
    box: tuple = (0.0, 1.0)
    seed: int = 0
    device: str = "auto"
    quiet: bool = True
    log_every: int = 10
    checkpoint_every: int = 0
    resume: bool = False
    lbfgs: dict = field(default_factory=dict)
    max_memory_gb: float | None = None
    hyper: dict = field(default_factory=dict)   # the model's hyper-parameters over its spec's CT defaults

    def __post_init__(self):
        from inr.models import MODELS

        from .baselines import FILTERS

        if self.model not in MODELS:
            raise InputError(f"--model must be one of {', '.join(MODELS)}, got {self.model!r}")
        _int("--params", self.params, 1, MAX_PARAMS, none=True)
        from inr.models import spec

        self.hyper = spec(self.model).check(dict(self.hyper or {}))
        _int("--steps", self.steps, 0, MAX_STEPS)
        _num("--seconds", self.seconds, 0, 1e9, low_open=True, none=True)
        _num("--lr", self.lr, 0, 1e3, low_open=True, none=True)
        if self.output not in OUTPUTS:
            raise InputError(f"--output must be one of {', '.join(OUTPUTS)}, got {self.output!r}")
        _num("--inr-tv", self.inr_tv, 0, 1e6, none=True)
        _int("--view-batch", self.view_batch, 1, MAX_VIEWS, none=True)
        _num("--coarse-to-fine", self.coarse_to_fine, 0, 1)
        if self.fbp_filter not in FILTERS:
            raise InputError(f"--fbp-filter must be one of {', '.join(FILTERS)}, got {self.fbp_filter!r}")
        _int("--sart-iterations", self.sart_iterations, 1, MAX_ITERATIONS)
        _num("--tv-weight", self.tv_weight, 0, 1e6)
        _int("--tv-iterations", self.tv_iterations, 1, MAX_ITERATIONS)
        lo, hi = self.box
        _num("--box (low)", lo)
        if not (isinstance(hi, (int, float)) and not isinstance(hi, bool) and hi > lo):
            raise InputError(f"--box must be LOW HIGH with HIGH > LOW (HIGH may be inf), got {self.box!r}")
        self.box = (float(lo), float(hi))
        _int("--seed", self.seed, 0, 2 ** 63 - 1)
        _int("--log-every", self.log_every, 1, MAX_STEPS)
        _int("--checkpoint-every", self.checkpoint_every, 0, MAX_STEPS)
        if self.max_memory_gb is None:
            self.max_memory_gb = default_max_memory_gb()
        _num("--max-memory", self.max_memory_gb, 0, 1e6, low_open=True)

    def memory_estimate(self, geometry) -> dict:
        """Bytes a reconstruction of ``geometry`` needs, estimated from the configuration alone."""
        from .radon import estimate_nnz

        H, W = geometry.shape
        nnz = estimate_nnz(geometry)
        # A and A^T in float64 (the cached base) and float32 (the working copy): 12 + 12 + 8 + 8 bytes per entry
        projector = 40 * nnz
        params = self.params or 200_000
        model = 16 * params                                     # weights, gradient, two Adam moments
        # hidden width: the hash model's MLP is 64 wide (its budget sits in the table); the others spend it
        # on ~3 square hidden layers (params ~ 3 width^2); ~12 saved float32 tensors per pixel and unit
        width = 64 if self.model == "hash" else max(64, int(math.sqrt(params / 3)))
        activations = 4 * 12 * H * W * width
        # images: a phantom's 4 x 4 supersampled canvas, the truth, reconstructions and TV's work arrays
        images = 8 * 40 * H * W + 8 * 4 * geometry.n_angles * geometry.n_det
        runtime = 500_000_000    # the interpreter, torch, scipy and scikit-image themselves (measured ~0.4 GB)
        return {"projector_nnz": nnz, "projector": projector, "model": model, "activations": activations,
                "images": images, "runtime": runtime,
                "total": projector + model + activations + images + runtime}

    def check_memory(self, geometry) -> dict:
        """:meth:`memory_estimate`, refused with the estimate above ``max_memory_gb``."""
        est = self.memory_estimate(geometry)
        limit = self.max_memory_gb * 1e9
        if est["total"] > limit:
            H, W = geometry.shape
            raise InputError(
                f"the reconstruction needs an estimated {est['total'] / 1e9:.1f} GB (projection matrix ~"
                f"{est['projector_nnz']:,} non-zeros for {geometry.n_angles} views x {geometry.n_det} detectors x a "
                f"{H}x{W} image: {est['projector'] / 1e9:.1f} GB; model of {self.params or 0:,} parameters with "
                f"activations: {(est['model'] + est['activations']) / 1e9:.1f} GB), above the limit of "
                f"{self.max_memory_gb:g} GB; reduce --views, --size or --params, or raise --max-memory")
        return est
