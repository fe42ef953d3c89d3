"""Measurement noise for simulated sinograms.

Transmission model: a ray with line integral ``p`` (image units x pixels) is attenuated by
``exp(-mu * p)``; the detector counts ``Poisson(I0 exp(-mu p))`` photons plus Gaussian readout noise
of standard deviation ``sigma`` counts; the measured sinogram is ``-log(counts / I0) / mu``, with the
counts floored at 1 photon (a ray that records nothing has no finite log).
``mu`` converts image values to attenuation per pixel; by default it is chosen so the most
attenuating ray of the clean sinogram transmits ``exp(-peak_attenuation)`` (``peak_attenuation``
= 3, about 5% of the photons: a plausible clinical range).
"""
from __future__ import annotations

import math

import torch
from inr.errors import InputError


def default_mu(sinogram: torch.Tensor, peak_attenuation: float = 3.0) -> float:
    """``mu`` for which the largest line integral of ``sinogram`` attenuates by ``exp(-peak_attenuation)``."""
    peak = float(sinogram.max())
    if not peak > 0:
        raise InputError("the sinogram has no positive line integral; cannot scale attenuation")
    if not peak_attenuation > 0:
        raise InputError(f"peak attenuation must be > 0, got {peak_attenuation}")
    return peak_attenuation / peak


def expected_counts(sinogram: torch.Tensor, photons: float, mu: float) -> torch.Tensor:
    """Mean detector counts ``I0 exp(-mu p)``."""
    return photons * torch.exp(-mu * sinogram)


def add_noise(sinogram: torch.Tensor, photons: float | None = None, readout: float = 0.0, mu: float | None = None,
              generator: torch.Generator | None = None, return_counts: bool = False):
    """Noisy copy of ``sinogram`` under the transmission model above.

    Args:
        sinogram: clean line integrals (any shape).
        photons: incident photons per ray ``I0``; ``None`` means noiseless (the input is returned).
        readout: standard deviation of the Gaussian readout noise, in counts (needs ``photons``).
        mu: attenuation scale; default :func:`default_mu`.
        generator: torch random generator (seeded by the caller for reproducibility).
        return_counts: also return the raw counts (before the floor and the log).
    """
    if photons is None:
        if readout:
            raise InputError("--readout-noise is a standard deviation in detector counts and needs --photons")
        return (sinogram.clone(), None) if return_counts else sinogram.clone()
    if not (photons > 0 and math.isfinite(photons)):
        raise InputError(f"--photons must be a positive number, got {photons}")
    if not readout >= 0:
        raise InputError(f"--readout-noise must be >= 0, got {readout}")
    mu = default_mu(sinogram) if mu is None else float(mu)
    lam = expected_counts(sinogram.double(), photons, mu)
    counts = torch.poisson(lam, generator=generator)
    if readout:
        counts = counts + readout * torch.randn(counts.shape, generator=generator, dtype=counts.dtype,
                                                device=counts.device)
    noisy = (-torch.log(counts.clamp(min=1.0) / photons) / mu).to(sinogram.dtype)
    return (noisy, counts) if return_counts else noisy
