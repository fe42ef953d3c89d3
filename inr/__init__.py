"""Shared layer core and INR fitting.

``inr.fit(file_or_array, model="hash", seconds=60)`` returns a :class:`~inr.fitting.Fit` (model, metrics,
history, ``predict``, ``render``, ``save``); ``inr.FitConfig`` is its typed config; ``inr.load(run_dir)``
reads a saved fit back.
"""
__version__ = "0.1.0"

_LAZY = {"fit": ("fitting", "fit"), "Fit": ("fitting", "Fit"), "FitConfig": ("fitting", "FitConfig"),
         "ModelConfig": ("models", "ModelConfig"), "TrainConfig": ("train", "TrainConfig"),
         "build": ("models", "build"), "spec": ("models", "spec")}


def load(run_dir, device: str = "cpu"):
    """A saved fit (:meth:`inr.fitting.Fit.load`)."""
    from .fitting import Fit

    return Fit.load(run_dir, device=device)


def __getattr__(name):   # the API without importing torch on `import inr`
    if name in _LAZY:
        import importlib

        mod, attr = _LAZY[name]
        return getattr(importlib.import_module(f"{__name__}.{mod}"), attr)
    raise AttributeError(f"module 'inr' has no attribute {name!r}")
