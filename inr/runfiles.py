"""Files every tool writes into a run folder: the versions record and atomic writes.

A run folder must never hold a file that looks complete but is not, so every write goes to a
temporary name beside the target and is renamed over it.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import platform
from pathlib import Path

import numpy as np
import torch

from . import __version__


def versions(*packages: str) -> dict:
    """python, platform, mulneurons, torch, numpy, plus the named distributions (e.g. "scipy", "scikit-image")."""
    v = {"python": platform.python_version(), "platform": platform.platform(), "mulneurons": __version__,
         "torch": torch.__version__, "numpy": np.__version__}
    for name in packages:
        try:
            v[name] = md.version(name)
        except md.PackageNotFoundError:
            v[name] = "not installed"
    return v


def json_default(o):
    """JSON for what json.dumps does not know: numpy scalars and arrays, tuples/sets, paths, the rest as str."""
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, (tuple, set)):
        return list(o)
    return str(o)


def _tmp(path) -> Path:
    path = Path(path)
    return path.with_name(f".{path.name}.tmp")


def write_text(path, text: str) -> None:
    tmp = _tmp(path)
    tmp.write_text(text)
    os.replace(tmp, path)


def json_safe(o):
    """``o`` with every non-finite float (NaN, +-inf; python, numpy or 0-d tensor) replaced by None and
    numpy / torch scalars and arrays turned into plain numbers and lists, so the result is valid JSON."""
    if isinstance(o, dict):
        return {k: json_safe(v) for k, v in o.items()}
    if isinstance(o, (list, tuple, set)):
        return [json_safe(v) for v in o]
    if isinstance(o, np.ndarray):
        return json_safe(o.tolist())
    if torch.is_tensor(o):
        return json_safe(o.detach().cpu().tolist())
    if isinstance(o, (bool, np.bool_)):
        return bool(o)
    if isinstance(o, np.integer):
        return int(o)
    if isinstance(o, (float, np.floating)):
        return float(o) if math.isfinite(o) else None
    return o


def write_json(obj, path) -> None:
    """Valid JSON (non-finite numbers become null; ``allow_nan=False`` guarantees no bare NaN)."""
    write_text(path, json.dumps(json_safe(obj), indent=2, default=json_default, allow_nan=False) + "\n")


def save_torch(obj, path) -> None:
    tmp = _tmp(path)
    torch.save(obj, tmp)
    os.replace(tmp, path)
