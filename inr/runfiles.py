"""Files every tool writes into a run folder: the versions record and atomic writes.

A run folder must never hold a file that looks complete but is not, so every write goes to a
temporary file beside the target and is renamed over it.  The temporary file is created exclusively
(``mkstemp``: ``O_CREAT | O_EXCL`` under an unpredictable name), so a symlink planted in a run folder
under a temporary name is never followed, and ``os.replace`` replaces a symlink at the target itself
instead of writing through it.
"""
from __future__ import annotations

import importlib.metadata as md
import json
import math
import os
import platform
import tempfile
from contextlib import contextmanager
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


@contextmanager
def replacing(path):
    """``with replacing(path) as tmp: write tmp`` -> ``tmp`` renamed over ``path`` when the block ends
    without error (removed otherwise).  ``tmp`` is a new, empty file created exclusively beside ``path``
    (``mkstemp``), so nothing planted in the folder is followed or overwritten."""
    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        os.replace(tmp, path)
    except BaseException:
        try:
            tmp.unlink()
        except OSError:
            pass
        raise


def write_text(path, text: str) -> None:
    with replacing(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)


def write_new(path, text: str, flag: str = "--out") -> None:
    """Write ``text`` to ``path``, which must not exist (one that appears meanwhile is not replaced): the
    text goes to an exclusive temporary file beside it, which is then hard-linked to ``path`` (``link``
    fails on any existing name, symlink or not) and removed."""
    from .runs import RunError

    path = Path(path)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        try:
            os.link(name, path)
        except FileExistsError:
            raise RunError(f"{flag} {path}: already exists; choose a new file (existing files are never "
                           f"replaced)") from None
    finally:
        os.unlink(name)


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


def json_text(obj) -> str:
    """Valid JSON text (non-finite numbers become null; ``allow_nan=False`` guarantees no bare NaN)."""
    return json.dumps(json_safe(obj), indent=2, default=json_default, allow_nan=False) + "\n"


def write_json(obj, path) -> None:
    """:func:`json_text` of ``obj`` written to ``path``."""
    write_text(path, json_text(obj))


def save_torch(obj, path) -> None:
    with replacing(path) as tmp:
        torch.save(obj, tmp)
