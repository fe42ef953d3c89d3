"""Model registry: ``build("lrnn-spder", in_features=2, out_features=1, params=200_000)``.

Every model is an :class:`INR` whose ``config`` rebuilds it: ``build(**model.config)``.
Widths come either explicitly (``hidden=256`` / ``rank=128``) or from a parameter budget
(``params=200_000``), which picks the width whose count is closest to the budget.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
from torch import nn

from .layers import ComplexGaborLayer, GaussLayer, LRNNLayer, PositionalEncoding, RealGaborLayer, SineLayer
from .layers.hashgrid import HashGridEncoding
from .errors import InputError


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of real parameters (a complex parameter counts twice)."""
    return sum(p.numel() * (2 if p.is_complex() else 1) for p in model.parameters()
               if p.requires_grad or not trainable_only)


class INR(nn.Module):
    """A coordinate network: ``body`` (a Sequential of layers) then a linear ``head``."""

    def __init__(self, body: nn.Sequential, head: nn.Linear, config: dict, complex_out: bool = False):
        super().__init__()
        self.body, self.head, self.config, self.complex_out = body, head, dict(config), complex_out

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.head(self.body(x))
        return y.real if self.complex_out else y


def _siren_family(activation_default: str):
    def make(in_features, out_features, hidden=256, hidden_layers=3, w0=30.0, w0_first=None,
             activation=activation_default, encoding=None, encoding_options=None, **fk):
        first = w0 if w0_first is None else w0_first
        layers = []
        if encoding == "hash":  # hash-grid features (HashGridEncoding's keywords in encoding_options) -> SIREN
            layers.append(HashGridEncoding(in_features, **(encoding_options or {}), **fk))
            in_features = layers[0].out_features
        elif encoding is not None or encoding_options:
            raise InputError(f"encoding must be None or 'hash', got {encoding!r}")
        layers += [SineLayer(in_features, hidden, w0=first, is_first=True, activation=activation, **fk)]
        layers += [SineLayer(hidden, hidden, w0=w0, activation=activation, **fk) for _ in range(hidden_layers)]
        head = nn.Linear(hidden, out_features, **fk)
        with torch.no_grad():  # SIREN's last layer uses the hidden-layer range, kept linear
            bound = math.sqrt(6.0 / hidden) / w0
            head.weight.uniform_(-bound, bound)
        return nn.Sequential(*layers), head, False
    return make


def _gauss(in_features, out_features, hidden=256, hidden_layers=3, scale=10.0, **fk):
    layers = [GaussLayer(in_features, hidden, scale=scale, **fk)]
    layers += [GaussLayer(hidden, hidden, scale=scale, **fk) for _ in range(hidden_layers)]
    return nn.Sequential(*layers), nn.Linear(hidden, out_features, **fk), False


def _wire(in_features, out_features, hidden=256, hidden_layers=3, w0=20.0, s0=10.0, form="complex", **fk):
    if form == "real":
        layers = [RealGaborLayer(in_features, hidden, w0=w0, s0=s0, **fk)]
        layers += [RealGaborLayer(hidden, hidden, w0=w0, s0=s0, **fk) for _ in range(hidden_layers)]
        return nn.Sequential(*layers), nn.Linear(hidden, out_features, **fk), False
    if form != "complex":
        raise InputError(f"WIRE form must be 'complex' or 'real', got {form!r}")
    layers = [ComplexGaborLayer(in_features, hidden, w0=w0, s0=s0, is_first=True, **fk)]
    layers += [ComplexGaborLayer(hidden, hidden, w0=w0, s0=s0, **fk) for _ in range(hidden_layers)]
    head = nn.Linear(hidden, out_features, dtype=layers[-1].linear.weight.dtype, device=fk.get("device"))
    return nn.Sequential(*layers), head, True


def _relu_pe(in_features, out_features, hidden=256, hidden_layers=3, n_freqs=10, **fk):
    enc = PositionalEncoding(in_features, n_freqs=n_freqs, **fk)
    layers = [enc, nn.Linear(enc.out_features, hidden, **fk), nn.ReLU()]
    for _ in range(hidden_layers):
        layers += [nn.Linear(hidden, hidden, **fk), nn.ReLU()]
    return nn.Sequential(*layers), nn.Linear(hidden, out_features, **fk), False


def _lrnn_family(activation_default: str):
    # Defaults from benchmarks/lrnn_study.py (docs/methods.md section 2.6): harmonic components (K = 4), w0
    # in the first layer's component frequencies (band="component"; audio fits use band="projection"),
    # SIREN's small read-out init, depth 3.  The poster's configuration is component="mlp", width=4,
    # band="component", head_init="default", depth=2.
    def make(in_features, out_features, rank=128, depth=3, dbar=2, width=4, w0=30.0, w0_first=None,
             activation=activation_default, shared=False, component_std=1.0, memory_efficient=True,
             kernel="fused", precision="fp32", component="harmonic", harmonics=4, band="component",
             head_init="small", **fk):
        if head_init not in ("default", "small"):
            raise InputError(f"head_init must be 'default' or 'small', got {head_init!r}")
        layers, n = [], in_features
        for i in range(depth):
            layers.append(LRNNLayer(n, rank, dbar=dbar, width=width, w0=(w0 if w0_first is None or i else w0_first),
                                    activation=activation, shared=shared, is_first=(i == 0),
                                    component_std=component_std, memory_efficient=memory_efficient,
                                    kernel=kernel, precision=precision, component=component,
                                    harmonics=harmonics, band=band, **fk))
            n = rank
        head = nn.Linear(rank, out_features, **fk)
        if head_init == "small":  # SIREN's read-out range: initial outputs ~0.03 instead of ~0.6
            with torch.no_grad():
                bound = math.sqrt(6.0 / rank) / 30.0
                head.weight.uniform_(-bound, bound)
                head.bias.zero_()
        return nn.Sequential(*layers), head, False
    return make


def _hash(in_features, out_features, table=1 << 14, levels=8, features=2, base_resolution=16,
          finest_resolution=None, hidden=64, hidden_layers=2, **fk):
    """Instant-NGP: hash-grid encoding (``table`` entries per level, any positive integer) -> ReLU MLP
    (``hidden_layers`` layers of ``hidden``) -> linear head.  A parameter budget solves for ``table``.
    8 levels rather than the paper's 16: on the CPU (cameraman 256^2, 200k params) 8 levels reached
    30/35/40 dB in about 0.7/1.3/2.1 s against 1.1/1.9/5.0 s for 16 (benchmarks/hash_sweep.py)."""
    enc = HashGridEncoding(in_features, levels=levels, features=features, base_resolution=base_resolution,
                           finest_resolution=finest_resolution, table=table, **fk)
    layers, n = [enc], enc.out_features
    for _ in range(hidden_layers):
        layers += [nn.Linear(n, hidden, **fk), nn.ReLU()]
        n = hidden
    return nn.Sequential(*layers), nn.Linear(n, out_features, **fk), False


# name -> (constructor, the width argument a parameter budget solves for)
_REGISTRY: dict[str, tuple[Callable, str]] = {
    "siren": (_siren_family("sin"), "hidden"),
    "spder": (_siren_family("spder"), "hidden"),
    "gauss": (_gauss, "hidden"),
    "wire": (_wire, "hidden"),
    "relu-pe": (_relu_pe, "hidden"),
    "lrnn-siren": (_lrnn_family("sin"), "rank"),
    "lrnn-spder": (_lrnn_family("spder"), "rank"),
    "hash": (_hash, "table"),
}
MODELS = tuple(_REGISTRY)


def register(name: str, constructor: Callable, width_arg: str) -> None:
    """Add a model family: ``constructor(in_features, out_features, **hyper) -> (body, head, complex_out)``."""
    _REGISTRY[name] = (constructor, width_arg)


def _make(name, in_features, out_features, hyper, device=None, dtype=None) -> INR:
    ctor, _ = _REGISTRY[name]
    body, head, cplx = ctor(in_features, out_features, device=device, dtype=dtype, **hyper)
    config = {"name": name, "in_features": in_features, "out_features": out_features, **hyper}
    return INR(body, head, config, complex_out=cplx)


def _count_for(name, in_features, out_features, hyper) -> int:
    with torch.device("meta"):
        return count_params(_make(name, in_features, out_features, hyper))


def solve_width(name: str, in_features: int, out_features: int, params: int, **hyper) -> int:
    """The width (hidden size or LRNN rank) whose parameter count is closest to ``params``."""
    _, arg = _REGISTRY[name]
    f = lambda w: _count_for(name, in_features, out_features, {**hyper, arg: w})
    lo, hi = 1, 2
    while f(hi) < params:
        lo, hi = hi, hi * 2
        if hi > 1 << 20:
            raise InputError(f"parameter budget {params} is too large for {name}")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) < params else (lo, mid)
    return min((lo, hi), key=lambda w: abs(f(w) - params))


def build(name: str, in_features: int, out_features: int, *, params: int | None = None,
          device=None, dtype=None, **hyper) -> INR:
    """Build a registry model.

    Args:
        name: one of :data:`MODELS`.
        in_features, out_features: coordinate and value dimensions.
        params: parameter budget; picks the width (``hidden`` or ``rank``) whose count is closest.
        **hyper: the family's hyper-parameters (``hidden``, ``hidden_layers``, ``w0``, ``rank``, ``dbar``, ...).
    """
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(_REGISTRY)}")
    if params is not None and params < 1:
        raise InputError(f"params must be positive, got {params}")
    try:
        if params is not None:
            hyper[_REGISTRY[name][1]] = solve_width(name, in_features, out_features, params, **hyper)
        return _make(name, in_features, out_features, hyper, device=device, dtype=dtype)
    except TypeError as e:  # an option the family does not take
        raise InputError(f"bad option for model {name!r}: {e}") from None


def from_config(config: dict, device=None, dtype=None) -> INR:
    """Rebuild a model from its ``config`` (as saved in a run folder's config.json)."""
    cfg = dict(config)
    name, i, o = cfg.pop("name"), cfg.pop("in_features"), cfg.pop("out_features")
    return build(name, i, o, device=device, dtype=dtype, **cfg)


# keys of a model config that count layers / levels / repeats: bounded tighter than widths
_COUNT_KEYS = ("depth", "hidden_layers", "levels", "harmonics", "n_freqs", "features", "dbar", "width")
MAX_CONFIG_INT = 1 << 26
MAX_CONFIG_COUNT = 256


def check_config(config, where, weights_bytes: int | None = None) -> dict:
    """A model config read from a run folder (untrusted), checked before anything is allocated: the
    name, the feature counts, every hyper-parameter a JSON scalar (ints up to :data:`MAX_CONFIG_INT`,
    layer / level counts up to :data:`MAX_CONFIG_COUNT`), and -- the model built on the ``meta`` device,
    which allocates nothing -- a parameter count that ``weights_bytes`` (the size of model.pt) can hold.
    Raises :class:`inr.schema.SchemaError` naming ``where`` and the field."""
    from .schema import Field, SchemaError, check, value

    cfg = check(config, {"name": Field(str, choices=MODELS), "in_features": Field(int, 1, 3),
                         "out_features": Field(int, 1, 4)}, where, prefix="model.")
    for key, v in cfg.items():
        if key in ("name", "in_features", "out_features"):
            continue
        if isinstance(v, bool) or v is None:
            continue
        if isinstance(v, int):
            value(v, Field(int, -MAX_CONFIG_INT, MAX_CONFIG_COUNT if key in _COUNT_KEYS else MAX_CONFIG_INT),
                  where, f"model.{key}")
        elif isinstance(v, float):
            value(v, Field(float), where, f"model.{key}")
        elif isinstance(v, str):
            value(v, Field(str, max_len=100), where, f"model.{key}")
        else:
            raise SchemaError(f"{where}: field 'model.{key}' must be a number, string, true/false or null, "
                              f"got {type(v).__name__}")
    try:
        n = count_params(from_config(cfg, device="meta"))
    except (TypeError, ValueError, RuntimeError) as e:
        raise SchemaError(f"{where}: field 'model' does not describe a model ({' '.join(str(e).split())[:200]})") \
            from None
    if weights_bytes is not None and 2 * n > weights_bytes + (1 << 16):
        raise SchemaError(f"{where}: field 'model' describes {n:,} parameters, more than model.pt "
                          f"({weights_bytes:,} bytes) can hold")
    return cfg
