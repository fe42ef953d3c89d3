"""Sparse-view parallel-beam CT: a differentiable projector that reproduces ``skimage.transform.radon``
(:mod:`tomography.radon`), FBP / SART / TV baselines (:mod:`tomography.baselines`), a transmission
noise model (:mod:`tomography.noise`) and INR reconstruction through ``inr.train.fit``
(:mod:`tomography.recon`).  Command line: ``python -m tomography recon --phantom``."""
from .radon import Geometry, Projector, backproject, make_geometry, radon, rotate_sum_radon, uniform_angles

__all__ = ["Geometry", "Projector", "backproject", "make_geometry", "radon", "rotate_sum_radon", "uniform_angles"]
