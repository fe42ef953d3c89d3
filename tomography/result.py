"""The library call behind ``python -m tomography recon``: :func:`reconstruct` -> :class:`Reconstruction`.

``reconstruct(scan, CTConfig(...))`` fits an INR to ``scan.measured`` (and, by default, runs FBP, SART
and TV beside it) and returns the trained model, its image, per-method metrics and the training
history.  A scan without ground truth works: every method is then scored by its sinogram residual
``||A x - y|| / ||y||`` (relative, float64 projector); with the truth also by PSNR and SSIM (data range
1, images clipped to the box).  ``Reconstruction.render(shape)`` samples the INR on another grid;
``Reconstruction.save(out)`` writes a run folder through :class:`inr.runs.RunFolder`.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import numpy as np
import torch

from inr.errors import InputError

from .config import CTConfig
from .recon import default_tv, Scan, pixel_grid, reconstruct_inr


def score(rec, truth, box) -> dict:
    """PSNR and SSIM (data range 1) of ``rec`` clipped to ``box`` against ``truth``."""
    from inr.metrics import psnr, ssim

    lo, hi = box
    rec = np.clip(rec, lo, hi if np.isfinite(hi) else None)
    return {"psnr": round(psnr(rec, truth, data_range=1.0), 3), "ssim": round(ssim(rec, truth, data_range=1.0), 4)}


def residual(scan: Scan, image: np.ndarray) -> float:
    """``||A x - y|| / ||y||`` for the image ``x`` and the measured sinogram ``y`` (float64)."""
    from .radon import Projector

    P = Projector.for_geometry(scan.geometry, dtype=torch.float64)
    y = scan.measured.double()
    r = P.forward(torch.as_tensor(image, dtype=torch.float64)) - y
    return float(torch.linalg.vector_norm(r) / torch.linalg.vector_norm(y).clamp_min(1e-300))


def run_baselines(scan: Scan, config: CTConfig, device="cpu") -> tuple[dict, dict]:
    """FBP, SART and TV reconstructions of ``scan`` and their wall seconds."""
    from .baselines import fbp, sart, tv_reconstruct

    lo, hi = config.box
    box = (lo, hi if np.isfinite(hi) else None)
    s = scan.measured.numpy()
    jobs = {"fbp": lambda: fbp(s, scan.geometry, config.fbp_filter),
            "sart": lambda: sart(s, scan.geometry, config.sart_iterations, clip=box),
            "tv": lambda: tv_reconstruct(s, scan.geometry, config.tv_weight, config.tv_iterations,
                                         box=(lo, hi if np.isfinite(hi) else float("inf")), device=device)}
    recons, seconds = {}, {}
    for name, job in jobs.items():
        t0 = time.perf_counter()
        recons[name] = job()
        seconds[name] = round(time.perf_counter() - t0, 3)
    return recons, seconds


@dataclass
class Reconstruction:
    """What :func:`reconstruct` returns.

    Attributes:
        model: the trained registry model (coordinates in [-1, 1]^2 -> value).
        image: the INR image on the scan's grid, ``(H, W)`` float64 (pixels outside the support 0).
        metrics: per method (the model's name, ``fbp``, ``sart``, ``tv``): ``residual`` (relative sinogram
            residual), ``seconds``, and ``psnr`` / ``ssim`` when the scan has its truth.
        history: the training log (one dict per logged step).
        baselines: the baseline images by name.
        scan, config: the inputs.
        fit: the :class:`inr.train.FitResult`.
    """

    model: torch.nn.Module
    image: np.ndarray
    metrics: dict
    history: list
    baselines: dict
    scan: Scan
    config: CTConfig
    fit: object = None
    ct_image: object = field(default=None, repr=False)

    def render(self, shape) -> np.ndarray:
        """The INR sampled on an ``(H, W)`` pixel grid spanning the same square (super-resolution for a
        finer ``shape``), through the same output map; pixels outside the scanned support are 0 (the
        support scaled to ``shape``; exactly the scan's own mask when ``shape`` is the scan's)."""
        from .config import MAX_SIZE

        shape = tuple(int(s) for s in shape)
        if len(shape) != 2 or not all(2 <= s <= MAX_SIZE for s in shape):
            raise InputError(f"render shape must be (H, W) with sides from 2 to {MAX_SIZE}, got {shape}")
        img = self.ct_image
        p = next(self.model.parameters())
        with torch.no_grad():
            y = self.model(pixel_grid(shape, device=p.device, dtype=torch.float32)).reshape(-1)
            if img.output == "sigmoid":
                y = torch.sigmoid(y)
        out = y.double().cpu().numpy().reshape(shape)
        if img.index is None:
            return out
        if shape == tuple(self.scan.geometry.shape):
            mask = np.zeros(shape[0] * shape[1], bool)
            mask[img.index.cpu().numpy()] = True
            return out * mask.reshape(shape)
        # the support in normalised coordinates: the largest normalised radius the scan's own mask reaches
        H0, W0 = self.scan.geometry.shape
        g0 = pixel_grid((H0, W0), dtype=torch.float64)[img.index.cpu()]
        r0 = float(torch.linalg.vector_norm(g0, dim=1).max())
        g = pixel_grid(shape, dtype=torch.float64).numpy()
        return out * (np.linalg.norm(g, axis=1) <= r0 + 1e-12).reshape(shape)

    def summary(self) -> dict:
        return {"note": "metrics of the FINAL iterate; residual = ||A x - y|| / ||y|| against the measured "
                        "sinogram; with the truth, PSNR 10 log10(1/MSE) and scikit-image SSIM, data range 1, "
                        "images clipped to the box",
                "metrics": self.metrics, "fit": self.fit.summary() if self.fit is not None else None,
                "seed": self.config.seed}

    def write(self, run) -> None:
        """Write the run files into an open :class:`inr.runs.RunFolder` ``run``."""
        from inr.runfiles import versions

        from .io import write_array
        from .plots import comparison_figure, save_png

        tmp = str(run.path)
        lo, hi = self.config.box
        top = hi if np.isfinite(hi) else float(max(np.max(self.image), 1e-12))
        save_png(os.path.join(tmp, "reconstruction.png"), np.clip(self.image, lo, top), vmin=lo, vmax=top)
        sino = self.scan.measured.numpy()
        save_png(os.path.join(tmp, "sinogram.png"), sino, vmin=float(sino.min()), vmax=float(sino.max()))
        recons = {**self.baselines, self.config.model: self.image}
        if self.scan.truth is not None:
            comparison_figure(os.path.join(tmp, "comparison.png"), self.scan.truth, recons, self.metrics,
                              f"{self.scan.geometry.shape[0]}x{self.scan.geometry.shape[1]}, "
                              f"{self.scan.geometry.n_angles} views")
        write_array(os.path.join(tmp, "reconstruction.npy"), self.image)
        if self.fit is not None:
            self.fit.write_history(os.path.join(tmp, "history.csv"))
        run.save_torch("model.pt", self.model.state_dict())
        summary = {**self.summary(), "versions": versions("scipy", "scikit-image")}
        run.write_json("metrics.json", summary)  # written last by callers that add config.json first

    def save(self, out) -> str:
        """Write a new run folder ``out`` (it must not exist) and return its absolute path."""
        from inr.runs import RunFolder

        from .radon import geometry_dict

        with RunFolder(out) as run:
            run.write_json("config.json", {"geometry": geometry_dict(self.scan.geometry),
                                           "angles": list(self.scan.geometry.theta),
                                           "config": self.config.__dict__, "model": self.model.config})
            self.write(run)
        return os.path.abspath(out)


def reconstruct(scan: Scan, config: CTConfig | None = None, *, checkpoint_path=None) -> Reconstruction:
    """Reconstruct ``scan`` (module docstring); ``config`` defaults to :class:`CTConfig()`.
    ``checkpoint_path``: where the INR fit checkpoints (``config.checkpoint_every``, ``config.resume``).
    The memory estimate is checked before anything is allocated."""
    from inr.train import resolve_device

    from .radon import Projector

    config = config or CTConfig()
    if not isinstance(scan, Scan):
        raise InputError(f"reconstruct expects a tomography.recon.Scan, got {type(scan).__name__}")
    geom = scan.geometry
    if tuple(scan.measured.shape) != (geom.n_angles, geom.n_det):
        raise InputError(f"the sinogram has shape {tuple(scan.measured.shape)}; the geometry expects "
                         f"{(geom.n_angles, geom.n_det)} (views, detectors)")
    if scan.truth is not None and tuple(np.shape(scan.truth)) != tuple(geom.shape):
        raise InputError(f"--truth has shape {tuple(np.shape(scan.truth))}; the reconstruction grid is {tuple(geom.shape)}")
    config.check_memory(geom)
    device = resolve_device(config.device)
    Projector.for_geometry(geom, dtype=torch.float64)   # build (and cache) the matrices once
    recons, seconds = run_baselines(scan, config, device) if config.baselines else ({}, {})
    inr_tv = default_tv(config.model) if config.inr_tv is None else config.inr_tv
    image, fit, img = reconstruct_inr(scan, config,
                                      checkpoint_path=None if checkpoint_path is None else str(checkpoint_path))
    from inr.models import count_params

    metrics = {}
    for name, rec in recons.items():
        metrics[name] = {"residual": round(residual(scan, rec), 6), "seconds": seconds[name]}
    oracle = max((h.get("oracle_best_psnr", -np.inf) for h in fit.history), default=None)
    metrics[config.model] = {"residual": round(residual(scan, image), 6), "seconds": round(fit.seconds, 3),
                             "steps": fit.steps, "params": count_params(img), "stopped_by": fit.stopped_by,
                             "divergence_events": len(fit.events), "inr_tv": inr_tv}
    if scan.truth is not None:
        metrics[config.model]["oracle_best_psnr (oracle selection, not the reported value)"] = oracle
        for name, rec in {**recons, config.model: image}.items():
            metrics[name].update(score(rec, scan.truth, config.box))
    if "fbp" in metrics:
        metrics["fbp"]["filter"] = config.fbp_filter
        metrics["sart"]["iterations"] = config.sart_iterations
        metrics["tv"].update({"weight": config.tv_weight, "iterations": config.tv_iterations})
    return Reconstruction(img.model, image, metrics, list(fit.history), recons, scan, config, fit, img)
