"""A signal + a model -> a trained run folder.

``fit_signal(signal_or_path, model="lrnn-spder", params=200_000, ...)`` seeds, builds the model from the
registry, trains it with :func:`inr.train.fit` and writes a run folder:

- ``reconstruction.png`` (input size; 16-bit for 16-bit input) or ``reconstruction.wav`` (input rate,
  channels, subtype); ``error.png`` for images (|prediction - truth| averaged over channels, colour-mapped,
  scaled so that the largest error is white-hot: its value is ``metrics["error_map_max"]``);
- ``comparison.png`` for images: original, reconstruction and the error map with a colour bar side by
  side, PSNR / SSIM in the title;
- ``metrics.json``, ``history.csv``, ``curves.png``, ``model.pt`` (state dict) and ``config.json``
  (model config, fit options, signal description).

Time to target: every ``eval_every`` steps (default :data:`EVAL_EVERY`) and after the last step the model
is evaluated on the WHOLE signal, off the training clock (the time it takes is reported as
``eval_seconds``).  ``metrics["time_to_target"]`` -- the headline -- counts only these whole-signal
evaluations: the first evaluation at or beyond a target, timed by the training clock at that step (so a
target is seen at most ``eval_every`` steps late).  ``metrics["time_to_target_batch"]`` is the older,
noisier measure from each step's random batch before its update (optimistic: a batch can score above the
whole signal).  ``history.csv`` holds the evaluations as rows with ``eval_psnr`` / ``eval_mse``.

The folder is assembled under a hidden temporary name next to ``out`` and renamed at the end, so a
run that fails or is interrupted never leaves a complete-looking folder.  With ``checkpoint_every``
the temporary folder keeps ``checkpoint.pt`` after an interruption and ``resume=True`` continues it.

The pieces (model defaults, loss, prediction, metrics, folder writing) are separate functions so
batched fitting and the benchmarks can reuse them.

Defaults (our choice, docs/methods.md section 1 where it speaks):

- learning rates (Adam, cosine decay to 0.1x): see :data:`DEFAULT_LR` and the sweep noted there;
- audio: SIREN/SPDER first-layer ``w0_first=3000``; SPDER and LRNN-SPDER use ``sin(z) arctan(z)``
  (``spder-atan``); LRNN audio models use ``w0_first=300`` (:data:`LRNN_AUDIO_W0_FIRST`) with
  ``band="projection"`` and Adam 1e-3 (:data:`AUDIO_LR`): their K = 4 harmonics and products already widen
  the band, and on :func:`inr.signals.test_audio` (50k params, 150 steps) w0 600, 1000 and 3000 stalled or
  were slower (docs/methods.md section 2.6).
"""
from __future__ import annotations

import json
import math
import os
import pickle
import platform
import shutil
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .models import build, count_params, from_config
from .signals import Signal, SignalError, load
from .runfiles import save_torch, versions, write_json
from .schema import read_json
from .runs import RunError, RunFolder, staging_dir
from .runs import check_out as _check_out  # noqa: F401 - used by inr.batched / inr.shard
from .train import DivergenceError, TrainConfig, fit, resolve_device, seed_everything

# Adam learning rates.  hash (Instant-NGP's code uses 1e-2): benchmarks/hash_sweep.py on the cameraman
# 256^2, ~200k params, 2048-8192 point batches, 5 s: 1e-2 first to 30/35/40 dB at the default 2048 points
# and 8 levels, 3e-2 close (ahead at 4096-8192 points), 3e-3 clearly slower.  (Instant-NGP's Adam betas
# (0.9, 0.99) and eps 1e-15, which the training loop does not expose, ended 3-5 dB higher after 5 s there.)
# SIREN/SPDER/LRNN: from a sweep on the cameraman at small scale (64^2 image,
# ~3k params, 300 full-batch steps; 128^2, ~12.5k params, 200 steps), one notch below the best rate
# there because wider nets want smaller rates: SIREN best 3e-3 (64^2) / 1e-3 (128^2); SPDER best 1e-3,
# collapses at 3e-3; LRNN best 1e-2, collapses at 3e-2.  Gauss, WIRE, ReLU+PE: the papers' code values.
DEFAULT_LR = {"siren": 5e-4, "spder": 5e-4, "gauss": 1e-3, "wire": 5e-3, "relu-pe": 1e-3,
              "lrnn-siren": 3e-3, "lrnn-spder": 3e-3, "hash": 1e-2}
FALLBACK_LR = 1e-3          # models registered later without an entry above
AUDIO_W0_FIRST = 3000.0       # SIREN / SPDER audio (docs/methods.md section 1)
LRNN_AUDIO_W0_FIRST = 300.0   # LRNN audio (our choice, see the module docstring)
# LRNN on audio: 1e-3 (3e-3, the image rate, stalled: test clip, 50k params, 150 steps, whole-clip MSE
# 0.038 at 3e-3, 2.1e-3 at 1e-3, 1.6e-3 at 3e-4; docs/methods.md section 2.6)
AUDIO_LR = {"lrnn-siren": 1e-3, "lrnn-spder": 1e-3}
PREDICT_CHUNK = 65536       # coordinates per forward pass when predicting a whole signal
# Random points per step on a CPU for batch="auto": on cameraman 256x256 in 60 s, 4096-point batches reached
# 38.7 dB (SIREN) / 39.1 dB (SPDER) against ~25-30 dB with 16384 (benchmarks/image_fit.py, README).
CPU_BATCH = 4096
# Whole-signal evaluations every this many steps (time to target; off the clock).  Measured: `inr fit
# --seconds 20 --threads 1` (512^2 cameraman, SIREN 200k, 4096-point batches) on the loaded 2-core CPU ran
# 291 steps at 69 ms/step, and one whole-image evaluation took 2.9 s, about 43 steps' worth.  Every 100
# steps the evaluations add ~40% wall time outside the training clock and time targets to within 100 steps.
EVAL_EVERY = 100
MAX_PARAMS = 10**9          # --params above this is refused (a 1e11 budget would exhaust memory)
# Per-family exceptions: the hash grid's steps cost ~linear in the batch and 2048-point steps learn about as
# much as 4096-point ones, so 2048 reached 30/35/40 dB first at every rate and level count tried
# (cameraman 256^2, 200k params: 0.6/1.0/1.8 s against 0.8/1.7/3.1 s; benchmarks/hash_sweep.py).
CPU_BATCH_BY_MODEL = {"hash": 2048}
# Adam settings per family (default betas (0.9, 0.999), eps 1e-8).  The hash grid uses Instant-NGP's:
# sparse table rows get rare gradients, which a fast second-moment decay and a tiny eps keep from being
# damped; in paired 5 s runs on cameraman 256^2 it ended 3-5 dB higher (benchmarks/hash_sweep.py --adam ngp).
ADAM_BY_MODEL = {"hash": {"betas": (0.9, 0.99), "eps": 1e-15}}
RUN_FILES = ("metrics.json", "config.json", "model.pt", "history.csv", "curves.png")
IMAGE_FILES = ("reconstruction.png", "error.png", "comparison.png")


def _positive_finite(name: str, v) -> float:
    try:
        x = float(v)
    except (TypeError, ValueError):
        raise RunError(f"{name} must be a number, got {v!r}") from None
    if not (math.isfinite(x) and x > 0):
        raise RunError(f"{name} must be a finite number > 0, got {v}")
    return x


def check_model_options(model_options: dict | None, params: int | None) -> None:
    """Reject model hyper-parameters that cannot build a model (zero widths, non-finite frequencies)
    before any work, with a message naming the option."""
    for k, v in (model_options or {}).items():
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int) and k in ("hidden", "hidden_layers", "rank", "depth", "dbar", "width",
                                        "n_freqs") and v < 1:
            raise RunError(f"--{k.replace('_', '-')} must be >= 1, got {v}")
        if isinstance(v, float) and not math.isfinite(v):
            raise RunError(f"--{k.replace('_', '-')} must be a finite number, got {v}")
        if k in ("w0", "w0_first", "scale", "s0") and isinstance(v, (int, float)) and not v > 0:
            raise RunError(f"--{k.replace('_', '-')} must be > 0, got {v}")
    if params is not None and not (1 <= params <= MAX_PARAMS):
        raise RunError(f"--params must be between 1 and {MAX_PARAMS:,}, got {params:,}")


# ----------------------------------------------------------------------------------------------
# Model and loss


def compiled_kernels_available() -> bool:
    """Whether LRNN fits use the torch.compile'd component kernels: a C++ compiler is on the PATH (Inductor
    needs one on the CPU) and ``INR_COMPILE`` is not ``0``.  The first fit on a machine spends ~15-40 s
    compiling; later processes load the kernels from Inductor's on-disk cache."""
    if os.environ.get("INR_COMPILE", "1") == "0":
        return False
    return torch.cuda.is_available() or any(shutil.which(c) for c in ("c++", "g++", "gcc", "clang"))


def model_defaults(model: str, kind: str) -> dict:
    """Hyper-parameters this tool sets for ``model`` on an ``"image"`` or ``"audio"`` signal
    (anything passed in ``model_options`` overrides them)."""
    d = {}
    if model in ("lrnn-siren", "lrnn-spder"):
        d["kernel"] = "compiled" if compiled_kernels_available() else "fused"
    if kind != "audio":
        return d
    if model in ("siren", "spder"):
        d["w0_first"] = AUDIO_W0_FIRST
    if model in ("lrnn-siren", "lrnn-spder"):
        # the band from a SIREN-style projection with a fixed step multiplier (docs/methods.md section 2.6)
        d["w0_first"], d["band"] = LRNN_AUDIO_W0_FIRST, "projection"
    if model in ("spder", "lrnn-spder"):
        d["activation"] = "spder-atan"
    return d


def default_lr(model: str, kind: str = "image") -> float:
    """Adam learning rate for ``model`` on an ``"image"`` or ``"audio"`` signal."""
    if kind == "audio" and model in AUDIO_LR:
        return AUDIO_LR[model]
    return DEFAULT_LR.get(model, FALLBACK_LR)


def build_for(signal: Signal, model: str, params: int | None = None, model_options: dict | None = None,
              device=None):
    """Build ``model`` for ``signal``: coordinate dim in, channels out, this tool's defaults for the kind."""
    hyper = {**model_defaults(model, signal.kind), **(model_options or {})}
    if params is not None and any(k in hyper for k in ("hidden", "rank", "table")):
        params = None  # an explicit width wins over the budget
    try:
        return build(model, signal.coord_dim, signal.channels, params=params, device=device, **hyper)
    except TypeError as e:  # build() turns these into ValueError only after the width search
        raise RunError(f"bad option for model {model!r}: {e}") from None


def to_network(values: torch.Tensor, kind: str) -> torch.Tensor:
    """Signal values -> the [-1, 1] training targets (images: 2 v - 1; audio: already in [-1, 1])."""
    return values * 2 - 1 if kind == "image" else values


def from_network(out: torch.Tensor, kind: str) -> torch.Tensor:
    """Network outputs -> the signal's value scale (inverse of :func:`to_network`)."""
    return (out + 1) * 0.5 if kind == "image" else out


def make_loss(model, coords: torch.Tensor, targets: torch.Tensor, kind: str, batch: int | None = None):
    """``step -> (loss, info)``: MSE on the [-1, 1] targets over ``batch`` random points (with
    replacement, drawn from torch's global CPU generator so checkpoints resume the same stream) or
    all points.  ``info`` holds the batch PSNR on the [0, 1] scale (images) or the batch MSE (audio)."""
    y = to_network(targets, kind)
    n = coords.shape[0]
    full = batch is None or batch >= n

    def loss_fn(step):
        if full:
            x, t = coords, y
        else:
            idx = torch.randint(n, (batch,)).to(coords.device)
            x, t = coords[idx], y[idx]
        out = model(x)
        loss = torch.mean((out - t) ** 2)
        with torch.no_grad():
            if kind == "image":  # PSNR of the clamped prediction on [0, 1]
                err = torch.mean((from_network(out, kind).clamp(0, 1) - (t + 1) * 0.5) ** 2)
                info = {"psnr": M.psnr_from_mse(float(err))}
            else:
                info = {"mse": float(loss)}
        return loss, info

    return loss_fn


# The L-BFGS stage's loss: every point of the signal up to this many (256 x 256 pixels; the graph of one
# full-batch evaluation grows with points x width), else this many points drawn once (see make_full_loss).
LBFGS_MAX_POINTS = 65536


def make_full_loss(model, coords: torch.Tensor, targets: torch.Tensor, kind: str, seed: int = 0,
                   max_points: int = LBFGS_MAX_POINTS):
    """The deterministic loss of the L-BFGS stage (``fit(..., lbfgs_loss=)``): :func:`make_loss` over all
    points when there are at most ``max_points``, else over one fixed set of ``max_points`` points drawn
    without replacement from a generator seeded by ``seed`` (the same set after a resume, and the global
    generators are not touched)."""
    n = coords.shape[0]
    if n > max_points:
        idx = torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:max_points].to(coords.device)
        coords, targets = coords[idx], targets[idx]
    return make_loss(model, coords, targets, kind, None)


@torch.no_grad()
def predict(model, coords: torch.Tensor, kind: str, chunk: int = PREDICT_CHUNK) -> torch.Tensor:
    """The model's prediction in the signal's value scale, ``(N, C)`` float64 on the CPU, in chunks
    of ``chunk`` coordinates so memory stays bounded for large signals."""
    was_training = model.training
    model.eval()
    parts = [from_network(model(coords[i:i + chunk]), kind).double().cpu() for i in range(0, coords.shape[0], chunk)]
    model.train(was_training)
    return torch.cat(parts)


def make_evaluator(model, coords: torch.Tensor, values: torch.Tensor, kind: str, chunk: int = PREDICT_CHUNK):
    """``step -> dict``: the model on the WHOLE signal (in chunks), for :func:`inr.train.fit`'s ``evaluate``.
    Images: ``psnr`` (dB) and ``mse`` of the prediction clamped to [0, 1], as in :func:`signal_metrics`;
    audio: ``mse`` on the [-1, 1] amplitude scale.  Draws no random numbers, so the run is unchanged."""
    n_values = values.numel()

    @torch.no_grad()
    def evaluate(step):
        was_training = model.training
        model.eval()
        sse = 0.0
        for i in range(0, coords.shape[0], chunk):
            p = from_network(model(coords[i:i + chunk]), kind)
            if kind == "image":
                p = p.clamp(0, 1)
            sse += float(((p.double() - values[i:i + chunk].double()) ** 2).sum())
        model.train(was_training)
        mse = sse / n_values
        if kind == "image":
            return {"psnr": M.psnr_from_mse(mse), "mse": mse}
        return {"mse": mse}

    return evaluate


def signal_metrics(signal: Signal, pred) -> dict:
    """Images: PSNR and SSIM (data range 1) of the prediction clamped to [0, 1].
    Audio: MSE on the [-1, 1] amplitude scale and rho_AG."""
    p, t = signal.reshape(pred), signal.values
    if signal.kind == "image":
        p = np.clip(p, 0.0, 1.0)
        out = {"psnr": M.psnr(p, t, data_range=1.0), "ssim": _ssim(p, t)}
    else:
        out = {"mse": M.mse(p, t), "rho_ag": M.rho_ag(p, t)}
    return {k: (None if v is None or not math.isfinite(v) else v) for k, v in out.items()}


def _ssim(p: np.ndarray, t: np.ndarray) -> float | None:
    side = min(t.shape[:2])
    if side < 3:
        return None  # SSIM needs a window of at least 3 x 3
    win = min(7, side if side % 2 else side - 1)
    from skimage.metrics import structural_similarity

    if t.shape[2] == 1:
        return float(structural_similarity(t[..., 0], p[..., 0], data_range=1.0, win_size=win))
    return float(structural_similarity(t, p, data_range=1.0, channel_axis=2, win_size=win))


def saved_tensor_bytes(loss_fn) -> int:
    """Bytes of the tensors autograd saves for one training step (forward of ``loss_fn``),
    counted once per storage (views and reuse share a storage)."""
    seen: dict = {}

    def pack(t):
        try:
            s = t.untyped_storage()
            seen[(s.data_ptr(), t.device)] = s.nbytes()
        except (RuntimeError, NotImplementedError):  # sparse or functorch wrappers: count the tensor
            seen[(id(t), t.device)] = t.numel() * t.element_size()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = loss_fn(0)
    loss = out[0] if isinstance(out, tuple) else out
    del loss, out
    return int(sum(seen.values()))


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB, macOS bytes)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(r if sys.platform == "darwin" else r * 1024)


# ----------------------------------------------------------------------------------------------
# Run folder


def default_out(signal: Signal, model: str, root: str | os.PathLike = "runs") -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return Path(root) / f"{signal.name}-{model}-{stamp}"


def write_error_map(signal: Signal, pred, path: Path) -> float:
    """Colour-mapped |prediction - truth| (mean over channels) at the input size; returns the error
    that maps to the top of the colour scale."""
    from matplotlib import colormaps
    from PIL import Image

    err = np.abs(np.clip(signal.reshape(pred), 0, 1) - signal.values).mean(-1)
    top = float(err.max()) or 1.0
    rgb = (colormaps["inferno"](err / top)[..., :3] * 255).round().astype(np.uint8)
    Image.fromarray(rgb).save(path, format="PNG")
    return top


COMPARISON_WIDTH_IN, COMPARISON_DPI = 13.0, 100   # comparison.png: 1300 pixels wide


def comparison_size(shape) -> tuple[float, float]:
    """(width, height) in inches of comparison.png for an image of ``shape`` (H, W, ...): three panels
    side by side keeping the image's aspect ratio (clamped to 1:3 .. 3:1), plus room for the title."""
    aspect = min(3.0, max(1 / 3, shape[0] / shape[1]))
    return COMPARISON_WIDTH_IN, round(0.9 + 3.6 * aspect, 2)


def write_comparison(signal: Signal, pred, path: Path, metrics: dict | None = None):
    """``comparison.png``: original | reconstruction | |error| (mean over channels, with a colour bar),
    PSNR / SSIM in the title.  Gray images (and the first channel of gray+alpha) in gray, colour as RGB
    (alpha dropped).  Returns the matplotlib Figure (Agg canvas; pyplot is never used)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    truth = signal.values
    rec = np.clip(signal.reshape(pred), 0, 1)
    err = np.abs(rec - truth).mean(-1)

    def shown(a):
        return (a[..., 0], "gray") if a.shape[2] < 3 else (a[..., :3], None)

    fig = Figure(figsize=comparison_size(truth.shape))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3)
    for ax, (title, img) in zip(axes[:2], (("original", truth), ("reconstruction", rec))):
        a, cmap = shown(img)
        ax.imshow(a, cmap=cmap, vmin=0, vmax=1, interpolation="nearest" if max(a.shape[:2]) <= 256 else "antialiased")
        ax.set_title(title)
    im = axes[2].imshow(err, cmap="inferno", vmin=0, vmax=float(err.max()) or 1.0)
    axes[2].set_title("|error| (mean over channels)")
    fig.colorbar(im, ax=axes[2], fraction=0.046, pad=0.04)
    for ax in axes:
        ax.set_xticks([])
        ax.set_yticks([])
    m = metrics if metrics is not None else signal_metrics(signal, pred)
    psnr_text = "n/a" if m.get("psnr") is None else f"{m['psnr']:.2f} dB"
    ssim_text = "n/a" if m.get("ssim") is None else f"{m['ssim']:.4f}"
    fig.suptitle(f"{signal.name}: PSNR {psnr_text}   SSIM {ssim_text}")
    fig.savefig(path, dpi=COMPARISON_DPI, format="png")
    return fig


def write_curves(history: list, kind: str, path: Path) -> None:
    """Loss (and PSNR for images) against step and against seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in history if "loss" in r]
    evals = [r for r in history if any(k.startswith("eval_") for k in r)]
    # whole-signal evaluations drawn over the batch curve where they share its scale
    overlay = {"psnr": "eval_psnr"} if kind == "image" else {"loss": "eval_mse"}
    keys = ["loss"] + (["psnr"] if kind == "image" else [])
    fig = Figure(figsize=(9, 3.2 * len(keys)))
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(keys), 2, squeeze=False)
    for i, k in enumerate(keys):
        for j, x in enumerate(("step", "seconds")):
            ax = axes[i][j]
            pts = [(r[x], r[k]) for r in rows if r.get(k) is not None and math.isfinite(r[k])]
            if pts:
                ax.plot(*zip(*pts), lw=1, label="training batch")
            ek = overlay.get(k)
            epts = [(r[x], r[ek]) for r in evals if ek and isinstance(r.get(ek), (int, float))
                    and math.isfinite(r[ek])]
            if epts:
                ax.plot(*zip(*epts), "o-", ms=3, lw=1, label="whole signal")
                ax.legend(fontsize=8)
            if k == "loss":
                ax.set_yscale("log")
            ax.set_xlabel(x)
            ax.set_ylabel("training MSE ([-1,1] scale)" if k == "loss" else "PSNR (dB)")
            ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------
# The whole job


def fit_signal(signal: Signal | str | os.PathLike | None = None, model: str = "lrnn-spder",
               params: int | None = 200_000, steps: int = 2000, seconds: float | None = None,
               lr: float | None = None, batch: int | str | None = None, target_psnr=(30, 40),
               target_mse=(1e-3, 1e-4), device: str = "auto", seed: int = 0,
               out: str | os.PathLike | None = None, quiet: bool = False, model_options: dict | None = None,
               resume: bool = False, checkpoint_every: int = 0, schedule: str = "cosine",
               lr_final: float = 0.1, eval_every: int = EVAL_EVERY, warmup: int = 0,
               schedule_by: str = "auto", lbfgs: dict | None = None) -> dict:
    """Fit ``model`` to a signal and write a run folder; returns the metrics dict (also in metrics.json).

    Args:
        signal: a :class:`Signal`, a path to an image / WAV file, or None (the cameraman).
        model: a registry name (:data:`inr.models.MODELS`).
        params: parameter budget (picks ``hidden`` / ``rank``); ignored when ``model_options`` sets the width.
        steps, seconds: stop at ``steps`` optimizer steps or ``seconds`` of training, whichever comes first.
        lr: Adam learning rate; None picks :data:`DEFAULT_LR` for the model.
        batch: random points per step; None = every point (full batch); ``"auto"`` = full batch on CUDA,
            :data:`CPU_BATCH` points on the CPU (:data:`CPU_BATCH_BY_MODEL` for some families).
        target_psnr: PSNR targets (dB) whose first crossing is timed (images): ``time_to_target`` from
            the whole-signal evaluations, ``time_to_target_batch`` from the training batches.
        target_mse: MSE targets timed for audio (first MSE at or below each), likewise.
        eval_every: evaluate the whole signal every this many steps, off the clock (0: only after the last
            step); see the module docstring.
        device: ``auto``, ``cpu`` or ``cuda``.
        seed: seeds python, numpy and torch (initialisation and the point sampler).
        out: run folder (must not exist); None -> ``runs/<name>-<model>-<time>``.
        model_options: extra hyper-parameters for the model (``hidden``, ``rank``, ``w0``, ...).
        resume, checkpoint_every: write ``checkpoint.pt`` every N steps into the staging folder and
            continue from it when ``resume`` is set.
        schedule, lr_final, warmup, schedule_by: learning-rate schedule (see :class:`inr.train.TrainConfig`):
            shape, final fraction, linear warm-up steps, and whether its progress follows steps, time or
            the larger of both (``auto``).
        lbfgs: ``lbfgs_*`` keywords of :class:`inr.train.TrainConfig` (e.g. ``{"lbfgs_steps": 200}``): an
            L-BFGS stage after the Adam steps, on every point of the signal up to :data:`LBFGS_MAX_POINTS`,
            else on that many points drawn once (:func:`make_full_loss`).
    """
    lbfgs = dict(lbfgs or {})
    if steps is None or steps <= 0:
        raise RunError(f"--steps must be > 0, got {steps}")
    if seconds is not None:
        _positive_finite("--seconds", seconds)
    if checkpoint_every < 0:
        raise RunError(f"--checkpoint-every must be >= 0, got {checkpoint_every}")
    if eval_every is None or eval_every < 0:
        raise RunError(f"--eval-every must be >= 0, got {eval_every}")
    if warmup is None or warmup < 0:
        raise RunError(f"--warmup must be >= 0, got {warmup}")
    if schedule_by not in ("auto", "steps", "time"):
        raise RunError(f"--schedule-by must be steps, time or auto, got {schedule_by!r}")
    if schedule_by == "time" and seconds is None:
        raise RunError("--schedule-by time needs a time budget (--seconds)")
    if lr is not None:
        lr = _positive_finite("--lr", lr)
    check_model_options(model_options, params)
    sig = signal if isinstance(signal, Signal) else load(signal)
    dev = resolve_device(device)
    if batch == "auto":
        batch = None if dev.type == "cuda" else CPU_BATCH_BY_MODEL.get(model, CPU_BATCH)
    if batch is not None and (not isinstance(batch, int) or batch <= 0):
        raise RunError(f"--batch must be a positive integer, 'auto' or None (full batch), got {batch!r}")
    lr = default_lr(model, sig.kind) if lr is None else lr
    targets = tuple(float(t) for t in ((target_psnr if sig.kind == "image" else target_mse) or ()))
    out = Path(out) if out is not None else default_out(sig, model)
    run = RunFolder(out, resume=resume)   # checks --out before any work

    seed_everything(seed)
    net = build_for(sig, model, params, model_options, device=dev)
    _check_budget(net, model, params, model_options)
    fingerprint = json.dumps({"signal": {"kind": sig.kind, "shape": list(sig.shape), "channels": sig.channels,
                                         "sha256": sig.digest()},
                              "model": net.config}, sort_keys=True, default=str)
    cfg = TrainConfig(steps=int(steps), seconds=seconds, lr=lr, lr_final=lr_final, schedule=schedule,
                      schedule_by=schedule_by, warmup=int(warmup), seed=seed, **ADAM_BY_MODEL.get(model, {}),
                      device=str(dev), targets=targets, target_key="psnr" if sig.kind == "image" else "mse",
                      target_mode="max" if sig.kind == "image" else "min", quiet=quiet,
                      checkpoint_every=int(checkpoint_every), checkpoint_path=str(run.checkpoint),
                      resume=resume, fingerprint=fingerprint, desc=f"{model} {sig.name}", **lbfgs)
    coords, values = sig.coords(device=dev), sig.targets(device=dev)
    loss_fn = make_loss(net, coords, values, sig.kind, batch)
    evaluate = make_evaluator(net, coords, values, sig.kind)
    fit_options = {"model": model, "params_budget": params, "steps": int(steps), "seconds": seconds, "lr": lr,
                   "lr_final": lr_final, "schedule": schedule, "batch": batch, "targets": list(targets),
                   "device": str(dev), "seed": seed, "model_options": model_options or {},
                   "checkpoint_every": checkpoint_every, "eval_every": int(eval_every), "warmup": int(warmup),
                   "schedule_by": schedule_by, **lbfgs}

    with run:
        # Measured before training (and with the generator state restored) so the run itself is unchanged.
        rng = torch.get_rng_state()
        saved = saved_tensor_bytes(loss_fn)
        torch.set_rng_state(rng)
        if dev.type == "cuda":
            torch.cuda.synchronize(dev)
            torch.cuda.reset_peak_memory_stats(dev)
        full_loss = make_full_loss(net, coords, values, sig.kind, seed) if cfg.lbfgs_steps else None
        result = fit(net, loss_fn, cfg, evaluate=evaluate, eval_every=int(eval_every), lbfgs_loss=full_loss)
        pred = predict(net, coords, sig.kind)
        if not torch.isfinite(pred).all():
            raise DivergenceError(f"{model} on {sig.name}: the trained model predicts non-finite values; "
                                  f"lower --lr")
        memory = {"saved_tensors_bytes": saved, "peak_rss_bytes": peak_rss_bytes()}
        if dev.type == "cuda":
            memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(dev))
        m = {"signal": sig.name, "kind": sig.kind, "model": model, "params": count_params(net),
             **signal_metrics(sig, pred),
             "steps": result.steps, "seconds": result.seconds, "seconds_per_step": result.seconds_per_step,
             "stopped_by": result.stopped_by, "final_loss": result.final_loss,
             "final_loss_note": "training MSE ([-1,1] scale) of the final parameters, after the last update",
             "last_step_loss": result.last_step_loss,
             **target_metrics(result, int(eval_every)), "divergence_events": result.events,
             "batch": batch, "lr": lr, "device": str(dev),
             "device_name": torch.cuda.get_device_name(dev) if dev.type == "cuda" else platform.processor() or "cpu",
             "memory": memory, "seed": seed, "versions": versions(), "config": {"fit": fit_options,
                                                                               "model": net.config}}
        config = {"model": net.config, "fit": fit_options, "signal": sig.describe()}
        write_run(run.path, sig, net, pred, m, config, result)
    m["run_dir"] = str(out)
    return m


def target_metrics(result, eval_every: int) -> dict:
    """The time-to-target entries of metrics.json from a :class:`inr.train.FitResult` (module docstring)."""
    when = f"every {eval_every} steps and after the last step" if eval_every else "after the last step only"
    return {"time_to_target": result.time_to_target_eval,
            "time_to_target_batch": result.time_to_target_batch,
            "time_to_target_note": "time_to_target: training seconds / step at the first whole-signal "
                                   f"evaluation ({when}) at or beyond each target; time_to_target_batch: first training batch (before its "
                                   "update) at or beyond it - noisier and optimistic",
            "eval_every": eval_every, "evaluations": result.evaluations,
            "eval_seconds": result.eval_seconds}


def _check_budget(net, model: str, params: int | None, model_options: dict | None) -> None:
    """A --params budget below the smallest model of the family (width / rank 1) is an error, not a
    silently larger model."""
    if params is None or any(k in (model_options or {}) for k in ("hidden", "rank")):
        return
    n = count_params(net)
    width = net.config.get("hidden", net.config.get("rank"))
    if width == 1 and n > params:
        raise RunError(f"--params {params:,} is below the smallest {model} model for this signal "
                       f"({n:,} parameters at width 1); raise --params or set --hidden / --rank")


def write_run(folder: Path, sig: Signal, net, pred, metrics: dict, config: dict, result) -> None:
    """Write every file of a run folder into ``folder`` (metrics.json last)."""
    folder = Path(folder)
    sig.write(pred, folder / ("reconstruction.png" if sig.kind == "image" else "reconstruction.wav"))
    if sig.kind == "image":
        metrics["error_map_max"] = write_error_map(sig, pred, folder / "error.png")
        write_comparison(sig, pred, folder / "comparison.png", metrics)
    result.write_history(folder / "history.csv")
    write_curves(result.history, sig.kind, folder / "curves.png")
    save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / "model.pt")
    write_json(config, folder / "config.json")
    write_json(metrics, folder / "metrics.json")


def check_run_config(config, where, weights_bytes: int | None = None) -> dict:
    """A run folder's config.json (untrusted input) with ``model`` and ``signal`` checked
    (:func:`inr.models.check_config`, :func:`inr.signals.check_description`) before anything is built."""
    from .models import check_config
    from .schema import Field, check
    from .signals import check_description

    config = check(config, {"model": Field(dict), "signal": Field(dict)}, where)
    config["model"] = check_config(config["model"], where, weights_bytes)
    config["signal"] = check_description(config["signal"], where)
    return config


def load_run(run_dir: str | os.PathLike, device: str = "cpu"):
    """``(model, config)`` from a run folder: the model rebuilt from config.json, weights from model.pt."""
    d = Path(run_dir)
    if not d.is_dir():
        raise RunError(f"{d}: no such run folder")
    missing = [f for f in ("config.json", "model.pt") if not (d / f).is_file()]
    if missing:
        raise RunError(f"{d}: not a complete run folder (missing {', '.join(missing)})")
    config = check_run_config(read_json(d / "config.json", "run config"), d / "config.json",
                              (d / "model.pt").stat().st_size)   # untrusted: every field checked first
    try:
        net = from_config(config["model"], device=resolve_device(device))
        state = torch.load(d / "model.pt", map_location=resolve_device(device), weights_only=True)
        net.load_state_dict(state)
    except (ValueError, KeyError, TypeError, RuntimeError, EOFError, OSError, pickle.UnpicklingError) as e:
        raise RunError(f"{d}: corrupt run folder ({' '.join(str(e).split())[:300]})") from None
    return net, config


def evaluate_run(run_dir: str | os.PathLike, device: str = "auto", write: bool = True) -> dict:
    """Rebuild a run's model, reload its signal (source file or built-in), predict and recompute the
    metrics.  With ``write`` they go to ``RUN_DIR/eval.json``."""
    d = Path(run_dir)
    dev = resolve_device(device)
    net, config = load_run(d, device=str(dev))
    desc = config["signal"]
    sig = _reload_signal(desc, d)
    pred = predict(net, sig.coords(device=dev), sig.kind)
    m = {"signal": sig.name, "kind": sig.kind, "model": config["model"]["name"], "params": count_params(net),
         **signal_metrics(sig, pred), "device": str(dev), "run_dir": str(d)}
    if write:
        write_json(m, d / "eval.json")
    return m


def _reload_signal(desc: dict, run_dir: Path) -> Signal:
    from .signals import from_description

    try:
        sig = from_description(desc)
    except SignalError as e:
        raise RunError(f"{run_dir}: cannot reload the fitted signal: {e}") from None
    if desc.get("sha256") and sig.digest() != desc["sha256"]:
        raise RunError(f"{run_dir}: the signal at {desc.get('source') or desc.get('builtin')} has changed "
                       f"since the run was fitted (content hash differs)")
    return sig
