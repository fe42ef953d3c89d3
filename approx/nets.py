"""Univariate ReLU networks for the Runge study: quadratic (QNN) or conventional (MLP).

A network is an ``nn.Sequential`` of ``QuadraticLinear``/``nn.Linear`` layers with ``nn.ReLU`` between
them (none after the last), described by a JSON config.  ``save``/``load`` keep the state dict in
``model.pt`` (loaded with ``weights_only=True``) and the config in ``config.json`` beside it.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import torch
from torch import nn

from inr.layers.quadratic import QuadraticLinear
from inr.errors import InputError
from inr.runfiles import save_torch, write_text
from inr.schema import read_json

ARCHS = ("qnn", "mlp")


class ModelFileError(InputError):
    """A model path that cannot be read as a saved network."""


def build_net(widths, arch: str = "qnn", compact: bool = False, relinear: bool = True,
              device=None, dtype=None) -> nn.Sequential:
    """``widths = (1, 10, 10, 10, 10, 1)`` -> Linear/Quadratic layers with ReLU between them."""
    widths = [int(w) for w in widths]
    if len(widths) < 2 or min(widths) < 1:
        raise InputError(f"widths must list >= 2 positive layer sizes, got {widths}")
    if arch not in ARCHS:
        raise InputError(f"arch must be one of {ARCHS}, got {arch!r}")
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:])):
        if arch == "qnn":
            layers.append(QuadraticLinear(a, b, compact=compact, relinear=relinear, device=device, dtype=dtype))
        else:
            layers.append(nn.Linear(a, b, device=device, dtype=dtype))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
    return nn.Sequential(*layers)


def net_from_config(config: dict, device=None, dtype=None) -> nn.Sequential:
    try:
        return build_net(config["widths"], config.get("arch", "qnn"), config.get("compact", False),
                         config.get("relinear", True), device=device, dtype=dtype)
    except KeyError as e:
        raise ModelFileError(f"model config lacks the key {e}") from None


def _atomic_write_text(path: Path, text: str) -> None:
    write_text(path, text)


MAX_WIDTH = 4096     # layer sizes a saved network may declare
MAX_LAYERS = 64


def check_config(config, where) -> dict:
    """A saved network's config.json (untrusted): widths, arch, flags and domain checked for type and range
    (:class:`inr.schema.SchemaError` naming ``where`` and the field)."""
    from inr.schema import Field, SchemaError, check

    c = check(config, {"widths": Field(list, items=Field(int, 1, MAX_WIDTH), min_len=2, max_len=MAX_LAYERS),
                       "arch": Field(str, choices=ARCHS, required=False, default="qnn"),
                       "compact": Field(bool, required=False, default=False),
                       "relinear": Field(bool, required=False, default=True),
                       "domain": Field(list, items=Field(float), min_len=2, max_len=2, required=False,
                                       default=[-1.0, 1.0])}, where)
    if not c["domain"][0] < c["domain"][1]:
        raise SchemaError(f"{where}: field 'domain' must be [lo, hi] with lo < hi, got {c['domain']}")
    return c


def count_params_from_widths(widths, arch: str = "qnn", compact: bool = False) -> int:
    """Parameters of :func:`build_net` ``(widths, arch, compact)``, without building it (an upper bound
    for the quadratic layers: three -- compact: two -- weight matrices and biases each)."""
    per = 1 if arch == "mlp" else 2 if compact else 3
    return sum(per * (a * b + b) for a, b in zip(widths[:-1], widths[1:]))


def save(net: nn.Module, config: dict, folder: str | os.PathLike) -> Path:
    """Write ``folder/model.pt`` and ``folder/config.json`` (each via a temporary name)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    save_torch({k: v.detach().cpu() for k, v in net.state_dict().items()}, folder / "model.pt")
    _atomic_write_text(folder / "config.json", json.dumps(config, indent=2))
    return folder


def load(path: str | os.PathLike, dtype=torch.float64) -> tuple[nn.Sequential, dict]:
    """Read a network saved by :func:`save`; ``path`` is its folder or its ``model.pt``."""
    path = Path(path)
    folder, weights = (path, path / "model.pt") if path.is_dir() else (path.parent, path)
    cfg_path = folder / "config.json"
    if not weights.exists():
        raise ModelFileError(f"{weights}: no such model file")
    if not cfg_path.exists():
        raise ModelFileError(f"{cfg_path}: missing (the model's config.json must sit beside model.pt)")
    config = check_config(read_json(cfg_path, "model config"), cfg_path)
    n_params = count_params_from_widths(config["widths"], config["arch"], config["compact"])
    if 2 * n_params > weights.stat().st_size + (1 << 16):
        raise ModelFileError(f"{cfg_path}: field 'widths' describes {n_params:,} parameters, more than {weights} "
                             f"({weights.stat().st_size:,} bytes) can hold")
    try:
        net = net_from_config(config, dtype=dtype)
    except ValueError as e:
        raise ModelFileError(f"{cfg_path}: {e}") from None
    try:
        state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types for a corrupt file
        raise ModelFileError(f"{weights}: cannot be read as a PyTorch state dict ({type(e).__name__}: {e})") from None
    try:
        net.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise ModelFileError(f"{weights}: does not match {cfg_path} ({e})") from None
    return net.to(dtype), config
