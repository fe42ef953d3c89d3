"""Metrics with explicit data ranges (docs/methods.md section 3)."""
from __future__ import annotations

import math

import numpy as np
from .errors import InputError


def _as_np(x) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def mse(pred, truth) -> float:
    p, t = _as_np(pred), _as_np(truth)
    if p.shape != t.shape:
        raise ValueError(f"shape mismatch: prediction {p.shape} vs truth {t.shape}")
    return float(np.mean((p - t) ** 2))


def psnr_from_mse(err: float, data_range: float = 1.0) -> float:
    return float("inf") if err <= 0 else 10.0 * math.log10(data_range ** 2 / err)


def psnr(pred, truth, data_range: float = 1.0, clip: bool = True) -> float:
    """Standard PSNR ``10 log10(data_range^2 / MSE)``; the prediction is clipped to [0, data_range]
    first (images).  Not SPDER's ``20 log10(255 / MSE)``."""
    p = _as_np(pred)
    if clip:
        p = np.clip(p, 0.0, data_range)
    return psnr_from_mse(mse(p, truth), data_range)


def ssim(pred, truth, data_range: float = 1.0, channel_axis: int | None = None) -> float:
    """scikit-image's SSIM with an explicit data range; ``channel_axis`` for colour images."""
    from skimage.metrics import structural_similarity

    p, t = np.clip(_as_np(pred), 0.0, data_range), _as_np(truth)
    return float(structural_similarity(t, p, data_range=data_range, channel_axis=channel_axis))


def rho_ag(pred, truth) -> float:
    """Cosine similarity of |FFT(prediction)| and |FFT(truth)| over the whole clip (per channel, averaged).
    Arrays are (samples,) or (samples, channels)."""
    p, t = _as_np(pred), _as_np(truth)
    if p.ndim == 1:
        p, t = p[:, None], t[:, None]
    P, T = np.abs(np.fft.rfft(p, axis=0)), np.abs(np.fft.rfft(t, axis=0))
    num = (P * T).sum(0)
    den = np.linalg.norm(P, axis=0) * np.linalg.norm(T, axis=0)
    return float(np.mean(np.where(den > 0, num / np.where(den > 0, den, 1), 0.0)))


def rel_l2(pred, truth) -> float:
    """||pred - truth|| / ||truth||."""
    p, t = _as_np(pred), _as_np(truth)
    n = np.linalg.norm(t)
    if n == 0:
        raise InputError("relative L2 is undefined for an all-zero reference")
    return float(np.linalg.norm(p - t) / n)
