"""Sparse-view CT, parallel or fan beam: a differentiable sparse-matrix projector that reproduces
``skimage.transform.radon`` and adds a flat-detector fan beam (:mod:`tomography.radon`), FBP / SART / TV
baselines (:mod:`tomography.baselines`), a transmission noise model (:mod:`tomography.noise`), scans from
files (:mod:`tomography.io`), checked options (:mod:`tomography.config`) and INR reconstruction
(:func:`reconstruct` -> :class:`Reconstruction`, :mod:`tomography.result`).  Command line:
``python -m tomography recon --phantom`` / ``recon --sinogram FILE`` / ``simulate``."""
from .config import CTConfig, ScanSpec
from .radon import (FanGeometry, Geometry, Projector, backproject, fan_geometry, make_geometry, radon,
                    rotate_sum_radon, uniform_angles)
from .recon import Scan, scan_image, simulate
from .result import Reconstruction, reconstruct

__all__ = ["CTConfig", "FanGeometry", "Geometry", "Projector", "Reconstruction", "Scan", "ScanSpec", "backproject",
           "fan_geometry", "make_geometry", "radon", "reconstruct", "rotate_sum_radon", "scan_image", "simulate",
           "uniform_angles"]
