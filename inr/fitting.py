"""A signal + a model -> a :class:`Fit` (and, through :meth:`Fit.save`, a run folder).

``fit("photo.png", model="siren", seconds=10)`` (or ``fit(signal, FitConfig(...))``) seeds, builds the
model from the registry with its family's defaults for the signal's kind (:mod:`inr.spec`), trains it
with :func:`inr.train.fit` and returns a :class:`Fit`: the model, metrics, history, ``predict``,
``render`` (any resolution or sample rate) and ``save``.  A saved run folder holds:

- ``reconstruction.png`` (input size; 16-bit for 16-bit input) or ``reconstruction.wav`` (input rate,
  channels, subtype); ``error.png`` for images (|prediction - truth| averaged over channels, colour-mapped,
  scaled so that the largest error is white-hot: its value is ``metrics["error_map_max"]``);
- ``comparison.png`` for images: original, reconstruction and the error map with a colour bar side by
  side, PSNR / SSIM in the title;
- ``metrics.json``, ``history.csv``, ``curves.png``, ``model.pt`` (state dict) and ``config.json``
  (``fit``: the resolved :class:`FitConfig`, which ``--config`` reads back; ``model``: the network's
  config; ``signal``: the signal's description).

Time to target: during training the model is evaluated off the training clock (the time it takes is
reported as ``eval_seconds``) on a time cadence -- evaluations take at most ``train.eval_fraction``
(default :data:`EVAL_FRACTION`) of the training time, the first right after step 1 -- or, with
``eval_every`` N, every N steps; and always after the last step (see :class:`FitConfig`).  These
evaluations cover the WHOLE signal up to :data:`EVAL_POINTS` points, else a fixed random subset of
:data:`EVAL_POINTS` points (a running estimate; the final metrics always cover the whole signal).
``metrics["time_to_target"]`` -- the headline -- counts only these evaluations: the first at or beyond a
target, timed by the training clock at that step.  ``metrics["time_to_target_batch"]`` is the older,
noisier measure from each step's random batch before its update (optimistic: a batch can score above the
whole signal).  ``history.csv`` holds the evaluations as rows with ``eval_psnr`` / ``eval_mse``.

Prediction (evaluations, the written reconstruction, ``render``) runs without autograd, block by block
over the grid (:func:`predict_grid`; memory bounded by the block besides the result), and a hash-grid
model computes each block's interpolation corners per axis rather than per point.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import platform
import resource
import sys
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch

from . import metrics as M
from .config import from_dict, leaf_paths, merge, to_dict
from .errors import InputError
from .models import ModelConfig, build, count_params, from_config, spec
from .signals import PNG_FAST_PIXELS, Signal, SignalError, load
from .runfiles import json_text, save_torch, versions, write_json, write_new
from .schema import read_json
from .runs import RunError, RunFolder, staging_dir
from .runs import check_out as _check_out  # noqa: F401 - used by inr.batched / inr.shard
from .train import DivergenceError, TrainConfig, resolve_device, seed_everything
from .train import fit as train_fit

# Points per block when predicting a whole signal (no autograd; the hash grid's corners per grid block,
# :func:`predict_signal`).  Measured on the loaded 2-core CPU (hash grid 200k, 512^2, 1 thread): blocks of
# 16k-32k points predicted the image in 0.14-0.18 s against 0.31 s for 256k-point blocks (cache), and the
# separable grid corners took 0.24-0.27 s against 0.65-0.77 s for the per-point corners.
PREDICT_CHUNK = 1 << 15
# The step cadence of `--eval-every N` without N, and of fits without a time budget.  Measured: `inr fit
# --seconds 20 --threads 1` (512^2 cameraman, SIREN 200k, 4096-point batches) on the loaded 2-core CPU ran
# 291 steps at 69 ms/step, and one whole-image evaluation took 2.9 s, about 43 steps' worth.
EVAL_EVERY = 100
# The default cadence of a timed fit: evaluations take at most this fraction of the training time
# (TrainConfig.eval_fraction; inr.callbacks.Evaluation).
EVAL_FRACTION = 0.05
# Evaluations during training cover the whole signal up to EVAL_POINTS points; a larger signal is
# evaluated on a fixed random subset of EVAL_POINTS points (a running estimate: the standard error of its
# MSE is ~ sqrt(2 / 16384) ~ 1.1 % for Gaussian errors, ~0.05 dB), and as a whole once after training.
# Measured on the loaded 2-core CPU (hash grid 300k, 1 thread): a whole 512^2 evaluation took 0.8 s, a
# 65,536-point subset 0.3 s; at EVAL_FRACTION an evaluation of e seconds allows the next one e / 0.05
# training seconds later, so 16,384 points (~0.08 s) time the targets to within ~2 s.
EVAL_POINTS = 1 << 14
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


@torch.inference_mode()
def predict(model, coords: torch.Tensor, kind: str, chunk: int = PREDICT_CHUNK) -> torch.Tensor:
    """The model's prediction in the signal's value scale, ``(N, C)`` float64 on the CPU, in chunks
    of ``chunk`` coordinates so memory stays bounded for large signals."""
    was_training = model.training
    model.eval()
    parts = [from_network(model(coords[i:i + chunk]), kind).double().cpu() for i in range(0, coords.shape[0], chunk)]
    model.train(was_training)
    return torch.cat(parts)


def _grid_encoding(model):
    """The model's leading hash-grid encoding (``model.body[0]``), or None."""
    from .layers.hashgrid import HashGridEncoding

    body = getattr(model, "body", None)
    first = body[0] if isinstance(body, torch.nn.Sequential) and len(body) else None
    return first if isinstance(first, HashGridEncoding) else None


def grid_axes(signal: Signal) -> list[torch.Tensor]:
    """The signal's grid lines per axis as float32 tensors: the values of :meth:`Signal.coords`."""
    return [torch.as_tensor(a, dtype=torch.float32) for a in signal.axes()]


@torch.inference_mode()
def predict_grid(model, axes, kind: str, chunk: int = PREDICT_CHUNK, device=None) -> torch.Tensor:
    """The prediction on the regular grid spanned by ``axes`` (1-D coordinate tensors, row-major), ``(N, C)``
    float32 on the CPU (the model's float32 outputs, so exactly :func:`predict`'s values), block by block
    along the first axis: memory beyond the result is bounded by the block of ``chunk`` points.  A model
    that starts with a hash grid computes each block's corners per axis
    (:meth:`~inr.layers.hashgrid.HashGridEncoding.grid_forward`); others read the block's coordinates."""
    dev = device or next(model.parameters()).device
    ns = [int(a.numel()) for a in axes]
    rest = int(np.prod(ns[1:])) if len(ns) > 1 else 1
    rows = max(1, chunk // rest)
    enc = _grid_encoding(model)
    was_training = model.training
    model.eval()
    out = None
    tail = [a.to(dev) for a in axes[1:]]
    for r0 in range(0, ns[0], rows):
        block = [axes[0][r0:r0 + rows].to(dev)] + tail
        if enc is not None:
            y = model.head(model.body[1:](enc.grid_forward(block)))
            y = y.real if getattr(model, "complex_out", False) else y
        else:
            g = torch.meshgrid(*block, indexing="ij")
            y = model(torch.stack([a.reshape(-1) for a in g], -1))
        y = from_network(y, kind).float().cpu()
        if out is None:
            out = torch.empty(int(np.prod(ns)), y.shape[1], dtype=torch.float32)
        out[r0 * rest:r0 * rest + y.shape[0]] = y
    model.train(was_training)
    return out


def predict_signal(model, signal: Signal, chunk: int = PREDICT_CHUNK) -> torch.Tensor:
    """The prediction on ``signal``'s own grid, ``(num_points, channels)`` float32 on the CPU
    (:func:`predict_grid`)."""
    return predict_grid(model, grid_axes(signal), signal.kind, chunk)


def make_evaluator(model, coords: torch.Tensor, values: torch.Tensor, kind: str, chunk: int = PREDICT_CHUNK,
                   points: int | None = None, seed: int = 0, axes=None):
    """``step -> dict``: the model on the WHOLE signal (in chunks, no autograd), for
    :func:`inr.train.fit`'s ``evaluate``; with ``points`` and a larger signal, on one fixed random subset of
    ``points`` points (drawn once without replacement from a generator seeded by ``seed``: a running
    estimate).  Images: ``psnr`` (dB) and ``mse`` of the prediction clamped to [0, 1], as in
    :func:`signal_metrics`; audio: ``mse`` on the [-1, 1] amplitude scale.  ``axes``: the signal's grid
    (:func:`grid_axes`), for the whole-signal path of :func:`predict_grid`.  Draws no random numbers from
    the global generators, so the run is unchanged."""
    subset = points is not None and coords.shape[0] > points
    if subset:
        idx = torch.randperm(coords.shape[0], generator=torch.Generator().manual_seed(seed))[:points]
        idx = idx.sort().values.to(coords.device)
        coords, values = coords[idx], values[idx]
    n_values = values.numel()

    @torch.inference_mode()
    def evaluate(step):
        was_training = model.training
        model.eval()
        sse = 0.0
        if axes is not None and not subset:
            p = predict_grid(model, axes, kind, chunk)
            p = p.clamp(0, 1) if kind == "image" else p
            sse = float(((p.double() - values.double().cpu()) ** 2).sum())
        for i in range(0, coords.shape[0] if axes is None or subset else 0, chunk):
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
    if signal.kind == "image":   # in bands of rows: memory ~ one copy of the prediction
        g, t = _grid(signal, pred), signal.values
        big = t.size > SSIM_FLOAT32_VALUES
        p = np.empty(t.shape, dtype=np.float32 if big else np.float64)
        sse = 0.0
        for r0 in range(0, t.shape[0], 256):
            p[r0:r0 + 256] = np.clip(g[r0:r0 + 256].astype(np.float64), 0.0, 1.0)
            sse += float(((p[r0:r0 + 256] - t[r0:r0 + 256]) ** 2).sum(dtype=np.float64))
        out = {"psnr": M.psnr_from_mse(sse / t.size), "ssim": _ssim(p, t)}
    else:
        p, t = signal.reshape(pred), signal.values
        out = {"mse": M.mse(p, t), "rho_ag": M.rho_ag(p, t)}
    return {k: (None if v is None or not math.isfinite(v) else v) for k, v in out.items()}


def _ssim(p: np.ndarray, t: np.ndarray) -> float | None:
    """Mean SSIM (data range 1) as scikit-image's ``structural_similarity`` computes it (Gaussian-free: a
    ``win`` x ``win`` uniform window, sample covariances, K1 0.01, K2 0.03, the mean over the pixels whose
    window lies inside the image, averaged over channels), evaluated with separable ``torch.avg_pool2d``
    over bands of rows in float64: the windows that fit inside the image need no border rule, so this is the same
    number (tests/test_scale.py checks it against scikit-image) at a fraction of the time and memory."""
    side = min(t.shape[:2])
    if side < 3:
        return None  # SSIM needs a window of at least 3 x 3
    win = min(7, side if side % 2 else side - 1)
    pad, np_ = (win - 1) // 2, win * win
    cov = np_ / (np_ - 1)
    c1, c2 = 0.01 ** 2, 0.03 ** 2
    avg = torch.nn.functional.avg_pool2d   # separable: a win x 1 then a 1 x win mean (2 win adds, not win^2)
    pool = lambda a: avg(avg(a, (win, 1), stride=1), (1, win), stride=1)
    h = t.shape[0]
    total, count = 0.0, 0
    for r0 in range(0, h - 2 * pad, SSIM_BAND):
        r1 = min(h, r0 + SSIM_BAND + 2 * pad)   # rows r0 .. r1 - 1: interior rows r0 + pad .. r1 - pad - 1
        x = torch.from_numpy(np.ascontiguousarray(np.moveaxis(t[r0:r1], -1, 0), dtype=np.float64))
        y = torch.from_numpy(np.ascontiguousarray(np.moveaxis(p[r0:r1], -1, 0), dtype=np.float64))
        ux, uy = pool(x), pool(y)
        vx = cov * (pool(x * x) - ux * ux)
        vy = cov * (pool(y * y) - uy * uy)
        vxy = cov * (pool(x * y) - ux * uy)
        s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux * ux + uy * uy + c1) * (vx + vy + c2))
        total += float(s.sum())
        count += s[0].numel()
    return total / count / t.shape[2]


SSIM_FLOAT32_VALUES = 1 << 22   # above this many values the clipped prediction is kept in float32 (its own dtype)
SSIM_BAND = 512   # rows per band of the SSIM of a large image (memory ~ band x width, not the whole image)


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


def write_error_map(signal: Signal, pred, path: Path, err: np.ndarray | None = None) -> float:
    """Colour-mapped |prediction - truth| (mean over channels) at the input size; returns the error
    that maps to the top of the colour scale.  ``err``: :func:`abs_error` if already computed."""
    from matplotlib import colormaps
    from PIL import Image

    err = abs_error(signal, pred) if err is None else err
    top = float(err.max()) or 1.0
    cmap = colormaps["inferno"]
    # matplotlib's lookup (index min(floor(x N), N - 1) into the N-entry table), as a uint8 table: the same
    # pixels as (cmap(err / top)[..., :3] * 255).round(), without a float RGBA image
    lut = (cmap(np.arange(cmap.N))[:, :3] * 255).round().astype(np.uint8)
    rgb = np.empty(err.shape + (3,), dtype=np.uint8)
    for r0 in range(0, err.shape[0], 256):   # in bands: bounded memory
        x = err[r0:r0 + 256] / top
        rgb[r0:r0 + 256] = lut[np.minimum((x * cmap.N).astype(np.int64), cmap.N - 1)]
    big = err.size > PNG_FAST_PIXELS
    Image.fromarray(rgb).save(path, format="PNG", compress_level=1 if big else 6)
    return top


def _grid(signal: Signal, pred) -> np.ndarray:
    """``pred`` shaped like ``signal.values`` without a copy where it can (float32 or float64)."""
    a = pred.detach().cpu().numpy() if torch.is_tensor(pred) else np.asarray(pred)
    if a.size != signal.values.size:
        signal.reshape(a)   # the error message
    return a.reshape(signal.values.shape)


def abs_error(signal: Signal, pred, band: int = 256) -> np.ndarray:
    """|clip(prediction, 0, 1) - truth| averaged over channels, ``(H, W)`` float64 for images up to
    1024 x 1024, float32 above (computed in bands of rows: memory ~ the result)."""
    p, t = _grid(signal, pred), signal.values
    big = t.shape[0] * t.shape[1] > 1 << 20
    err = np.empty(t.shape[:2], dtype=np.float32 if big else np.float64)
    for r0 in range(0, t.shape[0], band):
        err[r0:r0 + band] = np.abs(np.clip(p[r0:r0 + band].astype(np.float64), 0, 1) - t[r0:r0 + band]).mean(-1)
    return err


COMPARISON_MAX_SIDE = 512   # comparison.png panels (~400 pixels wide): larger images are shown block-averaged


def _shrink(a: np.ndarray, f: int) -> np.ndarray:
    """Mean over ``f`` x ``f`` blocks (the last partial rows / columns dropped)."""
    if f <= 1:
        return a
    h, w = a.shape[0] // f * f, a.shape[1] // f * f
    out = np.empty((h // f, w // f) + a.shape[2:], dtype=np.float64)
    step = 64 * f
    for r0 in range(0, h, step):
        blk = np.asarray(a[r0:min(h, r0 + step), :w], dtype=np.float64)
        out[r0 // f:(r0 + blk.shape[0]) // f] = blk.reshape(blk.shape[0] // f, f, w // f, f, *a.shape[2:]).mean((1, 3))
    return out


COMPARISON_WIDTH_IN, COMPARISON_DPI = 13.0, 100   # comparison.png: 1300 pixels wide


def comparison_size(shape) -> tuple[float, float]:
    """(width, height) in inches of comparison.png for an image of ``shape`` (H, W, ...): three panels
    side by side keeping the image's aspect ratio (clamped to 1:3 .. 3:1), plus room for the title."""
    aspect = min(3.0, max(1 / 3, shape[0] / shape[1]))
    return COMPARISON_WIDTH_IN, round(0.9 + 3.6 * aspect, 2)


def write_comparison(signal: Signal, pred, path: Path, metrics: dict | None = None, err: np.ndarray | None = None):
    """``comparison.png``: original | reconstruction | |error| (mean over channels, with a colour bar),
    PSNR / SSIM in the title.  Gray images (and the first channel of gray+alpha) in gray, colour as RGB
    (alpha dropped).  Returns the matplotlib Figure (Agg canvas; pyplot is never used)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    f = -(-max(signal.values.shape[:2]) // COMPARISON_MAX_SIDE)   # shown block-averaged above this size
    truth = _shrink(signal.values, f)
    rec = np.clip(_shrink(_grid(signal, pred), f), 0, 1)
    err = _shrink(abs_error(signal, pred) if err is None else err, f)

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


CURVE_POINTS = 2000   # training rows drawn per curve in curves.png


def write_curves(history: list, kind: str, path: Path) -> None:
    """Loss (and PSNR for images) against step and against seconds."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rows = [r for r in history if "loss" in r]
    if len(rows) > CURVE_POINTS:   # long runs: every k-th row (and the last) is plenty for a 900-pixel plot
        k = -(-len(rows) // CURVE_POINTS)
        rows = rows[::k] + ([rows[-1]] if (len(rows) - 1) % k else [])
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
    fig.subplots_adjust(left=0.09, right=0.98, bottom=0.1, top=0.96, wspace=0.28, hspace=0.32)
    fig.savefig(path, dpi=100)


# ----------------------------------------------------------------------------------------------
# The whole job: FitConfig -> fit() -> Fit

TARGETS = {"image": (30.0, 40.0), "audio": (1e-3, 1e-4)}   # timed by default: PSNR dB / MSE
# TrainConfig fields that belong to one process (paths, switches, what fit() fills in), not to the run
TRAIN_RUNTIME = ("checkpoint_path", "resume", "fingerprint", "quiet", "desc", "targets", "target_key",
                 "target_mode")


def _fit_train() -> TrainConfig:
    """The loop settings of a fit: 20,000 steps or 60 s, whichever comes first; lr, Adam betas and eps
    None = the model family's defaults for the signal's kind (:mod:`inr.spec`); evaluations on the time
    cadence :data:`EVAL_FRACTION`."""
    return TrainConfig(steps=20000, seconds=60.0, lr=None, eval_fraction=EVAL_FRACTION)


@dataclass
class FitConfig:
    """Everything a fit needs besides the signal; validated when made, saved as the run's config.json.

    ``batch``: random points per step; ``"auto"``: the family's CPU batch on a CPU (:mod:`inr.spec`),
    every point on CUDA; None or ``"full"``: every point.

    Evaluation cadence, one of two (off the training clock; always once after the last step too):
    ``eval_every`` = N: every N steps (0: after the last step only); ``eval_every`` None (the default): on
    training time, ``train.eval_fraction`` (default :data:`EVAL_FRACTION`: evaluations take at most that
    share of the training time, the first right after step 1; :class:`inr.callbacks.Evaluation`); a fit
    without a time budget or with ``eval_fraction`` None falls back to every :data:`EVAL_EVERY` steps.
    :meth:`resolved` keeps the one in force (the other None / 0 in config.json).  Signals above
    :data:`EVAL_POINTS` points are evaluated during training on a fixed random subset of
    :data:`EVAL_POINTS` points, and as a whole after training.

    ``targets``: PSNR (dB, images) or MSE (audio) values whose first crossing is timed; None: :data:`TARGETS`."""
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=_fit_train)
    batch: int | str | None = "auto"
    eval_every: int | None = None
    targets: tuple | None = None

    def __post_init__(self):
        if isinstance(self.model, dict):
            self.model = from_dict(ModelConfig, self.model, "model")
        if isinstance(self.train, dict):
            self.train = from_dict(TrainConfig, self.train, "train")
        if self.batch == "full":
            self.batch = None
        if self.batch not in ("auto", None) and (isinstance(self.batch, bool) or not isinstance(self.batch, int)
                                                 or self.batch < 1):
            raise RunError(f"--batch must be a positive integer, 'auto' or 'full', got {self.batch!r}")
        if self.eval_every is not None and (isinstance(self.eval_every, bool) or not isinstance(self.eval_every, int)
                                            or self.eval_every < 0):
            raise RunError(f"--eval-every must be an integer >= 0, got {self.eval_every!r}")
        if self.targets is not None:
            try:
                self.targets = tuple(float(t) for t in self.targets)
            except (TypeError, ValueError):
                raise RunError(f"targets must be numbers, got {self.targets!r}") from None
            if not all(math.isfinite(t) for t in self.targets):
                raise RunError(f"targets must be finite numbers, got {self.targets!r}")
        if self.train.seconds is not None:
            _positive_finite("--seconds", self.train.seconds)

    @classmethod
    def make(cls, **options) -> "FitConfig":
        """The default config with ``options`` by name (``FitConfig.make(model="siren", steps=500)``: any
        field of the config tree, or a hyper-parameter of the model); see :func:`with_overrides`."""
        return with_overrides(cls(), options)

    def resolved(self, kind: str, device: torch.device, signal: Signal | None = None) -> "FitConfig":
        """This config with every default made explicit for a signal of ``kind`` on ``device``: the
        family's task defaults (lr, Adam betas/eps, CPU batch, hyper-parameters, which may depend on the
        ``signal``'s grid, e.g. the hash grid's finest level), ``params="auto"`` (the family's budget for the
        signal's number of values, :meth:`inr.spec.TaskDefaults.auto_params`), the evaluation cadence in
        force and the targets."""
        task = spec(self.model.name).task(kind)
        t = self.train
        every, fraction = self.eval_every, t.eval_fraction
        if every is not None:
            fraction = None
        elif fraction is None or t.seconds is None:
            every, fraction = EVAL_EVERY, None
        train = replace(t, lr=task.lr if t.lr is None else t.lr, betas=task.betas if t.betas is None else t.betas,
                        eps=task.eps if t.eps is None else t.eps, device=str(device), eval_fraction=fraction)
        context = {"shape": tuple(signal.shape)} if signal is not None else {}
        options = spec(self.model.name).resolve(kind, self.model.options, **context)
        values = signal.num_points * signal.channels if signal is not None else None
        feats = (signal.coord_dim, signal.channels) if signal is not None else None
        model = ModelConfig(self.model.name, self.model.params, options).resolved(kind, values, feats)
        batch = self.batch
        if batch == "auto":
            batch = None if device.type == "cuda" else task.batch_for(model.params)
        targets = TARGETS[kind] if self.targets is None else self.targets
        return replace(self, model=model, train=train, batch=batch, targets=targets, eval_every=every)

    def to_dict(self) -> dict:
        return {**to_dict(self), "train": to_dict(self.train, skip=TRAIN_RUNTIME)}


def as_signal(signal) -> Signal:
    """A :class:`Signal` from a Signal, a file path, a numpy array (images ``(H, W[, C])`` in [0, 1]) or
    None (the built-in cameraman)."""
    if isinstance(signal, Signal):
        return signal
    if isinstance(signal, np.ndarray):
        from .signals import image_from_array

        return image_from_array(signal)
    return load(signal)


def fit(signal=None, config: FitConfig | None = None, run: RunFolder | None = None, **overrides) -> "Fit":
    """Fit an INR to ``signal`` (anything :func:`as_signal` takes) and return a :class:`Fit`.

    ``config``: a :class:`FitConfig` (default: the command line's defaults: the hash grid, 200k parameters,
    60 s); ``overrides``: options by name on top of it (``model="siren"``, ``params=50_000``,
    ``seconds=10``, ``lr=1e-3``, ``seed=1``, ``hidden=128``: any field of the config tree, or a model
    hyper-parameter).  ``run``: a :class:`~inr.runs.RunFolder` whose staging folder holds the checkpoint
    (``train.checkpoint_every``) and is resumed when the folder was opened with ``resume=True``; writing
    the results is :meth:`Fit.save`'s job.  A time budget (``seconds``) covers this call and that writing:
    training stops early by their estimated cost (:func:`writing_reserve`)."""
    started = time.perf_counter()
    cfg = with_overrides(config or FitConfig(), overrides)
    sig = as_signal(signal)
    dev = resolve_device(cfg.train.device)
    cfg = cfg.resolved(sig.kind, dev, sig)
    if cfg.train.checkpoint_every and run is None:
        raise RunError("checkpoint_every needs a run folder to keep the checkpoint in (fit(..., run=RunFolder(out)))")
    seed_everything(cfg.train.seed)
    net = cfg.model.build(sig.coord_dim, sig.channels, sig.kind, device=dev)
    _check_budget(net, cfg.model)
    coords, values = sig.coords(device=dev), sig.targets(device=dev)
    loss_fn = make_loss(net, coords, values, sig.kind, cfg.batch)
    fingerprint = json.dumps({"signal": {"kind": sig.kind, "shape": list(sig.shape), "channels": sig.channels,
                                         "sha256": sig.digest()}, "model": net.config}, sort_keys=True, default=str)
    image = sig.kind == "image"
    train = replace(cfg.train, targets=cfg.targets, target_key="psnr" if image else "mse",
                    target_mode="max" if image else "min", fingerprint=fingerprint,
                    desc=f"{cfg.model.name} {sig.name}", quiet=cfg.train.quiet,
                    checkpoint_path=str(run.checkpoint) if run is not None else None,
                    resume=bool(run is not None and run.resume))
    rng = torch.get_rng_state()   # measured before training, generator restored: the run is unchanged
    saved = saved_tensor_bytes(loss_fn)
    torch.set_rng_state(rng)
    reserved = 0.0
    if train.seconds is not None:   # the budget covers the set-up, evaluations and writing too (WRITE_COST)
        reserved = writing_reserve(net, sig, train.seconds, train.eval_fraction,
                                   spent=time.perf_counter() - started)
        train = replace(train, seconds=train.seconds - reserved) if reserved > 0 else train
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        torch.cuda.reset_peak_memory_stats(dev)
    full_loss = make_full_loss(net, coords, values, sig.kind, cfg.train.seed) if train.lbfgs_steps else None
    evaluate = make_evaluator(net, coords, values, sig.kind, points=EVAL_POINTS, seed=cfg.train.seed,
                              axes=grid_axes(sig))   # a fixed subset above EVAL_POINTS points (FitConfig)
    result = train_fit(net, loss_fn, train, evaluate=evaluate, eval_every=cfg.eval_every or 0, lbfgs_loss=full_loss)
    t0 = time.perf_counter()
    pred = predict_signal(net, sig)
    t1 = time.perf_counter()
    if not torch.isfinite(pred).all():
        raise DivergenceError(f"{cfg.model.name} on {sig.name}: the trained model predicts non-finite values; "
                              f"lower --lr")
    memory = {"saved_tensors_bytes": saved, "peak_rss_bytes": peak_rss_bytes()}
    if dev.type == "cuda":
        memory["cuda_max_allocated_bytes"] = int(torch.cuda.max_memory_allocated(dev))
    m = fit_metrics(sig, net, pred, result, cfg)
    m["memory"] = memory
    m["seconds_reserved_for_writing"] = reserved
    m["seconds_after_training"] = {"predict": round(t1 - t0, 3), "metrics": round(time.perf_counter() - t1, 3)}
    return Fit(net, sig.describe(), cfg, m, result, signal=sig, prediction=pred)


# A time budget T covers the whole fit, not only its training: from the start of :func:`fit` (the signal
# already read) to the last file of the run folder.  Training stops early by what the rest is expected to
# take (metrics.json: seconds_reserved_for_writing, and seconds_after_training as measured): the set-up so
# far (building the model, the memory probe), the evaluations (at most eval_fraction x the training time),
# and predicting, measuring and writing the whole signal, estimated as WRITE_COST x the time of one
# whole-signal prediction (timed on one block before training) + FILES_SECONDS (the figures, model.pt);
# at most T / 2.  Measured on the quiet 2-core CPU (hash grid, --params auto, 2 threads), prediction /
# metrics / files: 1024^2 RGB 0.33 / 0.28 / 1.63 s, 2048^2 1.45 / 1.32 / 1.94 s, 4096^2 5.71 / 7.77 /
# 4.72 s (the estimated prediction 5.86 s): the time after training is ~3.2 x the prediction at the large
# sizes plus ~1.3 s of fixed cost.  Audio writes a WAV and rho_AG (an FFT).
WRITE_COST = {"image": 3.2, "audio": 1.5}
FILES_SECONDS = 1.5


def writing_reserve(net, sig: Signal, seconds: float, eval_fraction: float | None = None,
                    chunk: int = PREDICT_CHUNK, spent: float = 0.0) -> float:
    """Training seconds to hold back from a budget of ``seconds`` (see :data:`WRITE_COST`): ``spent`` (the
    fit's set-up so far), the evaluations' share and the estimated cost of predicting and writing the whole
    signal, at most half the budget.  Times :func:`predict_grid` on one block of the signal's grid (three
    times, the fastest counts); draws no random numbers."""
    axes = grid_axes(sig)
    rest = int(np.prod([a.numel() for a in axes[1:]])) if len(axes) > 1 else 1
    rows = max(1, min(axes[0].numel(), chunk // rest))
    block = [axes[0][:rows]] + axes[1:]
    took = math.inf
    for _ in range(3):
        t = time.perf_counter()
        predict_grid(net, block, sig.kind, chunk)
        took = min(took, time.perf_counter() - t)
    after = took * sig.num_points / (rows * rest) * WRITE_COST[sig.kind] + FILES_SECONDS
    need = spent + (eval_fraction or 0.0) * seconds + after
    return round(min(0.5 * seconds, max(0.0, need)), 3)


def with_overrides(cfg, overrides: dict):
    """``cfg`` (a config dataclass) with ``overrides`` by name (see :func:`fit`); a name that is no field
    but a hyper-parameter of the model goes to ``model.options``."""
    if not overrides:
        return cfg
    cls = type(cfg)
    paths = leaf_paths(cls)
    overrides = dict(overrides)
    base = to_dict(cfg)
    name = overrides.get("model")
    if isinstance(name, str):
        overrides["model"] = {"name": name}
        if name != cfg.model.name:   # another family: the old family's options do not apply
            base["model"]["options"] = {}
    options = {k: overrides.pop(k) for k in list(overrides) if k not in paths and "." not in k}
    if options:
        overrides["model.options"] = {**base["model"]["options"], **options}
    return from_dict(cls, merge(base, overrides, cls))


def fit_metrics(sig: Signal, net, pred, result, cfg: FitConfig) -> dict:
    """metrics.json of a fit: signal metrics, steps and time, time to target, the settings used."""
    dev = cfg.train.device
    return {"signal": sig.name, "kind": sig.kind, "model": cfg.model.name, "params": count_params(net),
            **signal_metrics(sig, pred),
            "steps": result.steps, "seconds": result.seconds, "seconds_per_step": result.seconds_per_step,
            "stopped_by": result.stopped_by, "final_loss": result.final_loss,
            "final_loss_note": "training MSE ([-1,1] scale) of the final parameters, after the last update",
            "last_step_loss": result.last_step_loss,
            **target_metrics(result, cfg.eval_every or 0, cfg.train.eval_fraction,
                             min(sig.num_points, EVAL_POINTS) if sig.num_points > EVAL_POINTS else None),
            "divergence_events": result.events,
            "batch": cfg.batch, "lr": cfg.train.lr, "device": dev,
            "device_name": torch.cuda.get_device_name(dev) if dev.startswith("cuda") else platform.processor() or "cpu",
            "seed": cfg.train.seed, "versions": versions(), "config": {"fit": cfg.to_dict(), "model": net.config}}


@dataclass
class Fit:
    """A trained INR and what is known about it.

    ``model``: the network (reads coordinates in [-1, 1], answers on the [-1, 1] training scale);
    ``signal_info``: the fitted signal's description (kind, shape, channels, rate, ...);
    ``config``: the resolved :class:`FitConfig`; ``metrics``: as in metrics.json; ``train``: the training
    loop's :class:`~inr.train.FitResult` (``.history``)."""
    model: torch.nn.Module
    signal_info: dict
    config: FitConfig
    metrics: dict
    train: object = None
    signal: Signal | None = None
    prediction: torch.Tensor | None = None

    @property
    def kind(self) -> str:
        return self.signal_info["kind"]

    @property
    def history(self) -> list:
        return self.train.history if self.train is not None else []

    def predict(self, coords) -> np.ndarray:
        """Values at ``coords`` (``(N, d)``, each axis in [-1, 1] as the signal's grid spans it) on the
        signal's own scale (images: [0, 1] intensities, audio: [-1, 1] amplitude), ``(N, C)`` float64."""
        c = torch.as_tensor(np.asarray(coords, dtype=np.float32))
        d = len(self.signal_info["shape"])
        if c.ndim != 2 or c.shape[1] != d:
            raise RunError(f"coordinates must have shape (N, {d}), got {tuple(c.shape)}")
        dev = next(self.model.parameters()).device
        return predict(self.model, c.to(dev), self.kind).numpy()

    def render(self, shape=None, rate: int | None = None) -> Signal:
        """The signal re-sampled from the model: images at ``shape`` ``(H, W)`` pixels (any resolution,
        same extent: super-resolution), audio at ``rate`` samples per second (same duration).  Returns a
        :class:`Signal` (``.values``; ``.write(path)`` saves a PNG / WAV)."""
        grid = render_grid(self.signal_info, shape, rate)
        return grid.with_values(predict_signal(self.model, grid))

    def save(self, out: str | os.PathLike) -> Path:
        """Write the run folder ``out`` (which must not exist): reconstruction, error map and comparison
        (images), metrics.json, history.csv, curves.png, model.pt, config.json."""
        with RunFolder(out) as run:
            self.write(run.path)
        return Path(out)

    def write(self, folder: Path) -> None:
        """Write the run files into an existing (staging) folder."""
        if self.signal is None or self.prediction is None:
            raise RunError("this fit was loaded from a run folder; it is already saved")
        config = {"fit": self.config.to_dict(), "model": self.model.config, "signal": self.signal_info}
        write_run(Path(folder), self.signal, self.model, self.prediction, self.metrics, config, self.train)

    @classmethod
    def load(cls, run_dir: str | os.PathLike, device: str = "cpu") -> "Fit":
        """A saved fit: the model rebuilt from config.json and model.pt, its metrics (no signal)."""
        net, config = load_run(run_dir, device=device)
        fitcfg = config.get("fit") if isinstance(config.get("fit"), dict) else {}
        try:
            cfg = from_dict(FitConfig, fitcfg) if "train" in fitcfg else FitConfig(ModelConfig(net.config["name"]))
        except InputError:
            cfg = FitConfig(ModelConfig(net.config["name"]))
        info = config.get("signal")
        if not isinstance(info, dict) or info.get("kind") not in ("image", "audio"):
            raise RunError(f"{run_dir}: config.json has no usable signal description")
        metrics = {}
        try:
            metrics = json.loads((Path(run_dir) / "metrics.json").read_text())
        except (OSError, ValueError):
            pass
        return cls(net, info, cfg, metrics if isinstance(metrics, dict) else {})


def render_grid(info: dict, shape=None, rate: int | None = None) -> Signal:
    """An empty :class:`Signal` (zeros) laid out like the fitted one at another resolution."""
    kind, channels = info["kind"], int(info.get("channels") or 1)
    if kind == "image":
        if rate is not None:
            raise RunError("--rate applies to audio; give --size HxW for an image")
        h, w = (int(v) for v in (shape or info["shape"]))
        if h < 1 or w < 1:
            raise RunError(f"--size must be positive, got {h}x{w}")
        from .signals import check_pixels

        check_pixels(h, w)
        return Signal("image", np.zeros((h, w, channels)), bit_depth=info.get("bit_depth") or 8)
    if shape is not None:
        raise RunError("--size applies to images; give --rate for audio")
    n0, r0 = int(info["shape"][0]), int(info.get("rate") or 1)
    r = int(rate or r0)
    if r < 1:
        raise RunError(f"--rate must be a positive integer, got {rate}")
    n = max(1, int(round((n0 - 1) * r / r0)) + 1)
    from .signals import check_samples

    check_samples(n, channels)
    return Signal("audio", np.zeros((n, channels)), rate=r, subtype=info.get("subtype"),
                  scale=float(info.get("scale") or 1.0))


def target_metrics(result, eval_every: int, eval_fraction: float | None = None, subset: int | None = None) -> dict:
    """The time-to-target entries of metrics.json from a :class:`inr.train.FitResult` (module docstring);
    ``subset``: the evaluations during training covered a fixed random subset of that many points."""
    if eval_fraction:
        when = f"on training time, at most {eval_fraction:g} of it, and after the last step"
    else:
        when = f"every {eval_every} steps and after the last step" if eval_every else "after the last step only"
    what = (f"evaluation of a fixed random subset of {subset:,} points (a running estimate; the final "
            "metrics cover the whole signal)" if subset else "whole-signal evaluation")
    return {"time_to_target": result.time_to_target_eval,
            "time_to_target_batch": result.time_to_target_batch,
            "time_to_target_note": f"time_to_target: training seconds / step at the first {what} ({when}) at or "
                                   "beyond each target; time_to_target_batch: first training batch (before its "
                                   "update) at or beyond it - noisier and optimistic",
            "eval_every": eval_every, "eval_fraction": eval_fraction, "eval_points": subset,
            "evaluations": result.evaluations, "eval_seconds": result.eval_seconds}


def _check_budget(net, model: ModelConfig) -> None:
    """A --params budget below the smallest model of the family (width / rank 1) is an error, not a
    silently larger model."""
    if not isinstance(model.params, int):
        return
    n = count_params(net)
    width = net.config.get("hidden", net.config.get("rank"))
    if width == 1 and n > model.params:
        raise RunError(f"--params {model.params:,} is below the smallest {model.name} model for this signal "
                       f"({n:,} parameters at width 1); raise --params or set --hidden / --rank")


def write_run(folder: Path, sig: Signal, net, pred, metrics: dict, config: dict, result) -> None:
    """Write every file of a run folder into ``folder`` (metrics.json last)."""
    folder = Path(folder)
    t0 = time.perf_counter()
    sig.write(pred, folder / ("reconstruction.png" if sig.kind == "image" else "reconstruction.wav"))
    if sig.kind == "image":
        err = abs_error(sig, pred)
        metrics["error_map_max"] = write_error_map(sig, pred, folder / "error.png", err)
        write_comparison(sig, pred, folder / "comparison.png", metrics, err)
        del err
    result.write_history(folder / "history.csv")
    write_curves(result.history, sig.kind, folder / "curves.png")
    save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / "model.pt")
    write_json(config, folder / "config.json")
    after = metrics.get("seconds_after_training")
    if isinstance(after, dict):   # the files but metrics.json itself (written last)
        after["files"] = round(time.perf_counter() - t0, 3)
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


def evaluate_run(run_dir: str | os.PathLike, device: str = "auto", out: str | os.PathLike | None = None) -> dict:
    """Rebuild a run's model, reload its signal (source file or built-in), predict and recompute the
    metrics.  With ``out`` they are also written as JSON to that new file (refused if it exists; the run
    folder itself is never written into)."""
    d = Path(run_dir)
    dev = resolve_device(device)
    net, config = load_run(d, device=str(dev))
    desc = config["signal"]
    sig = _reload_signal(desc, d)
    pred = predict_signal(net, sig)
    m = {"signal": sig.name, "kind": sig.kind, "model": config["model"]["name"], "params": count_params(net),
         **signal_metrics(sig, pred), "device": str(dev), "run_dir": str(d)}
    if out is not None:
        write_new(out, json_text(m))
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
