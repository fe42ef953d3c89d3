"""Model registry: ``build("lrnn-spder", in_features=2, out_features=1, params=200_000)``.

Every model is an :class:`INR` whose ``config`` rebuilds it: ``build(**model.config)``.
Widths come either explicitly (``hidden=256`` / ``rank=128``) or from a parameter budget
(``params=200_000``), which picks the width whose count is closest to the budget.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .layers import ComplexGaborLayer, GaussLayer, LRNNLayer, PositionalEncoding, RealGaborLayer, SineLayer
from .errors import InputError
from .layers.hashgrid import DEFAULT_FINEST, HashGridEncoding
from .spec import Hyper, ModelSpec, TaskDefaults


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


def _siren(in_features, out_features, device=None, dtype=None, **h):
    """SIREN / SPDER (``h``: the family's hyper-parameters, complete: :func:`build` fills the spec's
    defaults)."""
    fk = {"device": device, "dtype": dtype}
    hidden, w0 = h["hidden"], h["w0"]
    first = w0 if h["w0_first"] is None else h["w0_first"]
    layers = []
    if h["encoding"] == "hash":  # hash-grid features (HashGridEncoding's keywords in encoding_options) -> SIREN
        layers.append(HashGridEncoding(in_features, **(h["encoding_options"] or {}), **fk))
        in_features = layers[0].out_features
    elif h["encoding"] is not None or h["encoding_options"]:
        raise InputError(f"encoding must be None or 'hash', got {h['encoding']!r}")
    layers += [SineLayer(in_features, hidden, w0=first, is_first=True, activation=h["activation"], **fk)]
    layers += [SineLayer(hidden, hidden, w0=w0, activation=h["activation"], **fk)
               for _ in range(h["hidden_layers"])]
    head = nn.Linear(hidden, out_features, **fk)
    with torch.no_grad():  # SIREN's last layer uses the hidden-layer range, kept linear
        bound = math.sqrt(6.0 / hidden) / w0
        head.weight.uniform_(-bound, bound)
    return nn.Sequential(*layers), head, False


def _gauss(in_features, out_features, device=None, dtype=None, **h):
    fk = {"device": device, "dtype": dtype}
    hidden, scale = h["hidden"], h["scale"]
    layers = [GaussLayer(in_features, hidden, scale=scale, **fk)]
    layers += [GaussLayer(hidden, hidden, scale=scale, **fk) for _ in range(h["hidden_layers"])]
    return nn.Sequential(*layers), nn.Linear(hidden, out_features, **fk), False


def _wire(in_features, out_features, device=None, dtype=None, **h):
    fk = {"device": device, "dtype": dtype}
    hidden, w0, s0, form = h["hidden"], h["w0"], h["s0"], h["form"]
    if form == "real":
        layers = [RealGaborLayer(in_features, hidden, w0=w0, s0=s0, **fk)]
        layers += [RealGaborLayer(hidden, hidden, w0=w0, s0=s0, **fk) for _ in range(h["hidden_layers"])]
        return nn.Sequential(*layers), nn.Linear(hidden, out_features, **fk), False
    if form != "complex":
        raise InputError(f"WIRE form must be 'complex' or 'real', got {form!r}")
    layers = [ComplexGaborLayer(in_features, hidden, w0=w0, s0=s0, is_first=True, **fk)]
    layers += [ComplexGaborLayer(hidden, hidden, w0=w0, s0=s0, **fk) for _ in range(h["hidden_layers"])]
    head = nn.Linear(hidden, out_features, dtype=layers[-1].linear.weight.dtype, device=device)
    return nn.Sequential(*layers), head, True


def _relu_pe(in_features, out_features, device=None, dtype=None, **h):
    fk = {"device": device, "dtype": dtype}
    hidden = h["hidden"]
    enc = PositionalEncoding(in_features, n_freqs=h["n_freqs"], **fk)
    layers = [enc, nn.Linear(enc.out_features, hidden, **fk), nn.ReLU()]
    for _ in range(h["hidden_layers"]):
        layers += [nn.Linear(hidden, hidden, **fk), nn.ReLU()]
    return nn.Sequential(*layers), nn.Linear(hidden, out_features, **fk), False


# the LRNNLayer keywords a family's hyper-parameters hand on unchanged
_LRNN_LAYER_KEYS = ("dbar", "width", "activation", "shared", "component_std", "memory_efficient", "kernel",
                    "precision", "component", "harmonics", "band")


def _lrnn(in_features, out_features, device=None, dtype=None, **h):
    """LRNN (defaults: docs/methods.md section 2.6 and the spec below): ``depth`` LRNNLayers of rank
    ``rank``, ``w0_first`` (default ``w0``) in the first, then a linear head."""
    fk = {"device": device, "dtype": dtype}
    if h["head_init"] not in ("default", "small"):
        raise InputError(f"head_init must be 'default' or 'small', got {h['head_init']!r}")
    rank, w0, w0_first = h["rank"], h["w0"], h["w0_first"]
    layer_kw = {k: h[k] for k in _LRNN_LAYER_KEYS}
    layers, n = [], in_features
    for i in range(h["depth"]):
        layers.append(LRNNLayer(n, rank, w0=(w0 if w0_first is None or i else w0_first), is_first=(i == 0),
                                **layer_kw, **fk))
        n = rank
    head = nn.Linear(rank, out_features, **fk)
    if h["head_init"] == "small":  # SIREN's read-out range: initial outputs ~0.03 instead of ~0.6
        with torch.no_grad():
            bound = math.sqrt(6.0 / rank) / 30.0
            head.weight.uniform_(-bound, bound)
            head.bias.zero_()
    return nn.Sequential(*layers), head, False


def _hash(in_features, out_features, device=None, dtype=None, **h):
    """Instant-NGP: hash-grid encoding (``table`` entries per level, any positive integer) -> ReLU MLP
    (``hidden_layers`` layers of ``hidden``) -> linear head.  A parameter budget solves for ``table``.
    8 levels rather than the paper's 16: on the CPU (cameraman 256^2, 200k params) 8 levels reached
    30/35/40 dB in about 0.7/1.3/2.1 s against 1.1/1.9/5.0 s for 16 (benchmarks/hash_sweep.py)."""
    fk = {"device": device, "dtype": dtype}
    enc = HashGridEncoding(in_features, levels=h["levels"], features=h["features"],
                           base_resolution=h["base_resolution"], finest_resolution=h["finest_resolution"],
                           table=h["table"], **fk)
    layers, n = [enc], enc.out_features
    for _ in range(h["hidden_layers"]):
        layers += [nn.Linear(n, h["hidden"], **fk), nn.ReLU()]
        n = h["hidden"]
    return nn.Sequential(*layers), nn.Linear(n, out_features, **fk), False


# ----------------------------------------------------------------------------------------------
# The family specs: hyper-parameter schema and per-task defaults (inr.spec).  Each family's hyper-parameter
# defaults are written once, in its spec (the ``*_DEFAULTS`` dicts below); :func:`build` hands them to the
# constructor under the caller's options.

_BIG = 1 << 16          # widths, ranks: refused above this before anything is allocated
_FREQ = (1e-6, 1e6)     # frequency factors and widths of Gaussians

_WIDTH = lambda help: (int, help, 1, _BIG)
_COMMON = {
    "hidden": _WIDTH("hidden width; overrides --params"),
    "hidden_layers": (int, "hidden layers after the first", 0, 64),
    "w0": (float, "frequency factor of the hidden layers", *_FREQ),
    "w0_first": (float, "first-layer frequency factor (default: w0)", *_FREQ),
    "activation": (str, "periodic activation", None, None, ("sin", "spder", "spder-atan")),
    "encoding": (str, "'hash': hash-grid features before the first layer (options in encoding_options)",
                 None, None, ("hash",)),
    "encoding_options": (dict, "HashGridEncoding keywords for encoding='hash'"),
    "scale": (float, "Gaussian scale s", *_FREQ),
    "s0": (float, "WIRE Gaussian width s0", *_FREQ),
    "form": (str, "WIRE form", None, None, ("complex", "real")),
    "n_freqs": (int, "positional-encoding frequencies L", 1, 30),
    "rank": _WIDTH("LRNN rank r per layer; overrides --params"),
    "depth": (int, "LRNN layers", 1, 64),
    "dbar": (int, "LRNN components per product", 1, 64),
    "width": (int, "LRNN component MLP width m (component=mlp)", 1, 1024),
    "shared": (bool, "one set of components shared by all r neurons"),
    "component_std": (float, "standard deviation of each component at initialisation", 1e-6, 1e3),
    "memory_efficient": (bool, "recomputing kernel (false: plain autograd)"),
    "kernel": (str, "LRNN component kernel: auto (C++ for harmonic components on the CPU, compiled on CUDA), "
                        "cpp, fused, compiled (torch.compile) or plain (autograd)"),
    "precision": (str, "LRNN hidden-layer projections in fp32 or bf16"),
    "component": (str, "LRNN components: harmonic (K harmonics) or mlp (the paper's 1-m-1 MLP)"),
    "harmonics": (int, "harmonics K of a harmonic component", 1, 64),
    "band": (str, "first LRNN layer: band from the components or from the projection"),
    "head_init": (str, "read-out initialisation", None, None, ("default", "small")),
    "table": (int, "hash-table entries per level; overrides --params", 1, 1 << 26),
    "levels": (int, "hash-grid levels", 1, 32),
    "features": (int, "features per hash-grid level", 1, 32),
    "base_resolution": (int, "coarsest hash-grid resolution", 1, 1 << 20),
    "finest_resolution": (int, "finest hash-grid resolution (default: per dimension)", 1, 1 << 24),
}


def _hypers(defaults: dict, choices=None) -> tuple:
    """:class:`Hyper` entries for the names of ``defaults`` (name -> default), in its order."""
    out = []
    for n, default in defaults.items():
        typ, text, lo, hi, ch = (*_COMMON[n], None, None, None)[:5]
        ch = (choices or {}).get(n, ch)
        out.append(Hyper(n, typ, default, text, lo, hi, ch))
    return tuple(out)


def _lrnn_choices():
    from .layers import lrnn

    return {"kernel": lrnn.KERNELS, "precision": lrnn.PRECISIONS, "component": lrnn.COMPONENTS,
            "band": lrnn.BANDS}


def _pde_siren(n: float = 1, dim: int = 2) -> dict:
    # The network reads t = 2x - 1, where a solution like sin(n pi x) has angular frequency n pi / 2 per
    # axis; a Laplacian amplifies frequency squared, so an image's w0 = 30 gives a huge, noisy residual.
    # Sweeps on poisson2d n = 4 (300 steps, 1024 points, exact boundary): w0_first 6 / 12 / 25 gave rel. L2
    # 0.67 / 0.74 / 0.94; hidden w0 only scales the effective learning rate (its init divides by w0).
    return {"w0_first": 1.5 * n, "w0": 30.0}


def _pde_lrnn(n: float = 1, dim: int = 2) -> dict:
    # At n = 4 (16k params): w0 1 / lr 5e-3: 0.030; 1.5 / 1e-2: 0.012; 3 / 1e-2: 0.029; 6.3 and 12 / 2e-3:
    # 0.93, 1.05.  A product of dbar components sums their frequencies, so a low w0 still reaches n.  The
    # poster's MLP components (the configuration these sweeps tuned); memory_efficient=False: plain
    # autograd is ~1.6x faster for the Laplacian's double backward at PINN batch sizes.
    return {"w0": max(1.0, 3.0 * n / 8.0), "depth": 2, "dbar": 2, "width": 4, "memory_efficient": False,
            "component": "mlp", "band": "component", "head_init": "default"}


def _lrnn_fit(kind: str, activation: str):
    def hyper(**_):
        d = {}   # the kernel stays the family default, 'auto' (inr.layers.lrnn.resolve_kernel)
        if kind == "audio":
            # the band from a SIREN-style projection with a fixed step multiplier (docs/methods.md 2.6).  w0 is
            # per coordinate unit and the clip spans [-1, 1], so it is a band per clip LENGTH (tuned on 1 s
            # clips; a longer clip puts proportionally more cycles in the same range, not measured here).  Dev sweep (benchmarks/audio_devtest.py, dev
            # clips speech-en-m3 and music-s1, 1 s at 11.025 kHz, 50k params, 400 full-batch steps; whole-clip
            # MSE geomean): w0_first 300: 1.5e-6, 1000: 7.6e-9 (lr 3e-4: 1.1e-8, 3e-3: 5e-6), 3000: 1.9e-4
            # (3e-4: 2.6e-5), 10000: stalled (4e-2); band="component" at 3000, 3e-4: 6.5e-4.  (The earlier
            # choice of 300 came from the 1 s synthetic 16 kHz test clip, 4096-point batches, 150 steps.)
            # Tuned for FULL batch (the paper's protocol; fits on CUDA): with 4096-point random batches (the
            # CPU default) the same sweep favours 300 (geomean 7.7e-5 against 5.6e-4 for 1000 at lr 1e-3 and
            # 3.6e-4 at 3e-4) and SIREN at 3e-4 beats both (1.4e-5): docs/results.md "Audio on a development
            # and a test set"
            d.update(w0_first=1000.0, band="projection")
            if activation == "spder":
                d["activation"] = "spder-atan"
        return d
    return hyper


_IMG_NOTE = ("image lr: sweeps on the cameraman at small scale (64^2 ~3k params, 300 full-batch steps; "
             "128^2 ~12.5k, 200 steps), one notch below the best rate (wider nets want smaller rates): SIREN "
             "best 3e-3/1e-3, SPDER best 1e-3 (collapses at 3e-3), LRNN best 1e-2 (collapses at 3e-2); Gauss, "
             "WIRE, ReLU+PE: the papers' code values.  CPU batch 4096: on cameraman 256^2 in 60 s 4096-point "
             "batches reached 38.7 dB (SIREN) / 39.1 dB (SPDER) against 25-30 dB with 16384")
_CT_NOTE = "CT lr: docs/methods.md section 4 (WIRE 5e-3, SIREN/Gauss 1e-3..2e-3, ReLU+PE 5e-4..1e-3)"
_PDE_NOTE = ("PDE lr: short sweeps on poisson2d n = 4 (SIREN diverged at 1e-3; LRNN improved from 2e-3 to "
             "1e-2); the others common defaults, not tuned")


def _sirenlike(activation: str) -> dict:
    audio = {"w0_first": 3000.0}
    if activation == "spder":
        audio["activation"] = "spder-atan"   # sin(z) arctan(z) on audio (docs/methods.md section 1)
    # images: SIREN 1e-3, the best of 5e-4 / 1e-3 / 2e-3 on the cameraman at 200k parameters (the LRNN study,
    # docs/methods.md 2.6); SPDER 5e-4 (1e-3 collapsed to 10.9 dB there).  Audio: w0_first 3000; SIREN lr 3e-4,
    # the best of 1e-4 / 3e-4 / 1e-3 on the audio dev sweep (the LRNN audio comment above; whole-clip MSE
    # geomean 4.1e-5 / 3.2e-6 / 4.7e-6; w0_first 1000: 4.8e-4 at 1e-4, 5.1e-6 at 1e-3); SPDER's 1e-4 untuned.
    return {"image": TaskDefaults(lr=1e-3 if activation == "sin" else 5e-4, note=_IMG_NOTE),
            "audio": TaskDefaults(lr=3e-4 if activation == "sin" else 1e-4, hyper=audio),
            "ct": TaskDefaults(lr=1e-3, cpu_batch=None, note=_CT_NOTE),
            "pde": TaskDefaults(lr=2e-4, cpu_batch=None, hyper=_pde_siren, note=_PDE_NOTE)}


def _lrnn_tasks(activation: str) -> dict:
    return {"image": TaskDefaults(lr=3e-3, hyper=_lrnn_fit("image", activation), note=_IMG_NOTE),
            # 3e-3, the image rate, stalled on the test clip (50k params, 150 steps: whole-clip MSE 0.038 at
            # 3e-3, 2.1e-3 at 1e-3, 1.6e-3 at 3e-4; docs/methods.md section 2.6); the audio dev sweep at
            # w0_first 1000 kept 1e-3 (7.6e-9 against 1.1e-8 at 3e-4 and 5e-6 at 3e-3)
            "audio": TaskDefaults(lr=1e-3, hyper=_lrnn_fit("audio", activation)),
            # one probe (Shepp-Logan 64^2, 25 views, 240 s): 17.9 dB at 5e-3 vs 14.4 dB at 1e-3
            "ct": TaskDefaults(lr=5e-3, cpu_batch=None),
            # L-BFGS points: LRNN-16k, poisson2d n = 4, 300 CPU-s, one seed: 2048 points 1.40e-4 and 2.25e-4 (two
            # runs, load 4-7) against 4096: 2.36e-4 and 3.56e-4 (fewer points, more L-BFGS steps in the budget)
            "pde": TaskDefaults(lr=1e-2, cpu_batch=None, hyper=_pde_lrnn, lbfgs_points=2048, note=_PDE_NOTE)}


def _plain_tasks(image_lr: float, ct_lr: float, ct_hyper=None, pde_lr: float | None = 1e-3) -> dict:
    t = {"image": TaskDefaults(lr=image_lr, note=_IMG_NOTE), "audio": TaskDefaults(lr=image_lr),
         "ct": TaskDefaults(lr=ct_lr, cpu_batch=None, hyper=ct_hyper or {}, note=_CT_NOTE)}
    if pde_lr is not None:
        t["pde"] = TaskDefaults(lr=pde_lr, cpu_batch=None)
    return t


# Instant-NGP: lr 1e-2 (its code; benchmarks/hash_sweep.py on the cameraman 256^2, ~200k params, 5 s:
# first to 30/35/40 dB at 2048 points and 8 levels, 3e-2 close, 3e-3 clearly slower); Adam betas (0.9, 0.99)
# and eps 1e-15: sparse table rows get rare gradients, which a fast second-moment decay and a tiny eps keep
# from being damped (paired 5 s runs ended 3-5 dB higher); 2048 points per step: a step costs ~linear in
# the batch and learns about as much as 4096 points (30/35/40 dB at 0.6/1.0/1.8 s against 0.8/1.7/3.1 s).
_NGP = {"betas": (0.9, 0.99), "eps": 1e-15, "cpu_batch": 2048}


def _hash_fit(shape=None, **_) -> dict:
    """Image and audio fits: the finest grid level at least at the signal's own resolution (its longest
    side / its number of samples; never below the encoding's default, :data:`DEFAULT_FINEST`), so that the
    finest cells are at most about one pixel / sample wide at every size."""
    if not shape:
        return {}
    return {"finest_resolution": max(DEFAULT_FINEST[len(shape)], int(max(shape)))}


def hash_auto_params(values: int) -> int:
    """``--params auto`` for the hash grid: HASH_PARAMS_PER_VALUE parameters per signal value, clamped to
    [HASH_PARAMS_MIN, HASH_PARAMS_MAX] (the table this was chosen from: docs/results.md, "Fits at every size")."""
    return int(min(HASH_PARAMS_MAX, max(HASH_PARAMS_MIN, round(HASH_PARAMS_PER_VALUE * values))))


HASH_PARAMS_PER_VALUE, HASH_PARAMS_MIN, HASH_PARAMS_MAX = 2.5, 200_000, 4_000_000


def hash_cpu_batch(params: int) -> int:
    """Random points per step on a CPU: a power of 2 near ``params / 500`` within [2048, 16384].  A step
    updates the whole table (Adam), so a large table wants more points per step: on the loaded 2-core CPU
    (30 s) the 843k-parameter cameraman reached 47.4 dB at 2048 points against 42.4 at 8192, the 4M-parameter
    2048^2 mosaic 37.2 dB at 8192 against 35.1 at 2048, and 60 s of stereo music (4M, 120 s) MSE 7.6e-5 at
    16384 against 8.8e-4 at 2048."""
    want = max(1.0, params / 500)
    return int(min(16384, max(2048, 2 ** round(math.log2(want)))))


_HASH_FIT = {**_NGP, "hyper": _hash_fit, "params": hash_auto_params, "cpu_batch_rule": hash_cpu_batch}
_HASH_TASKS = {"image": TaskDefaults(lr=1e-2, **_HASH_FIT), "audio": TaskDefaults(lr=1e-2, **_HASH_FIT),
               "ct": TaskDefaults(lr=1e-2, cpu_batch=None, tv=1e-4),
               "pde": TaskDefaults(lr=1e-3, cpu_batch=None)}

# The hyper-parameter defaults of each family (its spec's Hyper entries), in the order --help lists them.
_SIREN_DEFAULTS = {"hidden": 256, "hidden_layers": 3, "w0": 30.0, "w0_first": None, "activation": None,
                   "encoding": None, "encoding_options": None}
_GAUSS_DEFAULTS = {"hidden": 256, "hidden_layers": 3, "scale": 10.0}
_WIRE_DEFAULTS = {"hidden": 256, "hidden_layers": 3, "w0": 20.0, "s0": 10.0, "form": "complex"}
_RELU_PE_DEFAULTS = {"hidden": 256, "hidden_layers": 3, "n_freqs": 10}
# LRNN: benchmarks/lrnn_study.py (docs/methods.md section 2.6): harmonic components (K = 4), w0 in the first
# layer's component frequencies (band="component"; audio fits use band="projection"), SIREN's small read-out
# init, depth 3.  The poster's configuration is component="mlp", width=4, band="component",
# head_init="default", depth=2.
_LRNN_DEFAULTS = {"rank": 128, "depth": 3, "dbar": 2, "width": 4, "w0": 30.0, "w0_first": None,
                  "activation": None, "shared": False, "component_std": 1.0, "memory_efficient": True,
                  "kernel": "auto", "precision": "fp32", "component": "harmonic", "harmonics": 4,
                  "band": "component", "head_init": "small"}
_HASH_DEFAULTS = {"table": 1 << 14, "levels": 8, "features": 2, "base_resolution": 16, "finest_resolution": None,
                  "hidden": 64, "hidden_layers": 2}
_SPECS: dict[str, ModelSpec] = {}


def register(spec: ModelSpec) -> None:
    """Add (or replace) a model family in the registry."""
    _SPECS[spec.name] = spec


def spec(name: str) -> ModelSpec:
    """The :class:`~inr.spec.ModelSpec` of a registered family."""
    if name not in _SPECS:
        raise InputError(f"unknown model {name!r}; choose one of: {', '.join(_SPECS)}")
    return _SPECS[name]


def names(task: str | None = None) -> tuple:
    """Registered families (those with defaults for ``task`` when given)."""
    return tuple(n for n, s in _SPECS.items() if task is None or task in s.tasks)


def _register_builtins() -> None:
    for name, act in (("siren", "sin"), ("spder", "spder")):
        register(ModelSpec(name, _siren, "hidden", _hypers({**_SIREN_DEFAULTS, "activation": act}),
                           _sirenlike(act), "SIREN: sine layers" if act == "sin" else "SPDER: sin(z) sqrt|z| layers"))
    register(ModelSpec("gauss", _gauss, "hidden", _hypers(_GAUSS_DEFAULTS),
                       _plain_tasks(1e-3, 2e-3), "Gaussian activations exp(-(s z)^2)"))
    register(ModelSpec("wire", _wire, "hidden", _hypers(_WIRE_DEFAULTS),
                       _plain_tasks(5e-3, 5e-3, {"w0": 10.0, "s0": 10.0}, pde_lr=None),
                       "WIRE: complex Gabor wavelets"))
    register(ModelSpec("relu-pe", _relu_pe, "hidden", _hypers(_RELU_PE_DEFAULTS),
                       _plain_tasks(1e-3, 1e-3), "ReLU MLP on a positional (Fourier) encoding"))
    for name, act in (("lrnn-siren", "sin"), ("lrnn-spder", "spder")):
        register(ModelSpec(name, _lrnn, "rank", _hypers({**_LRNN_DEFAULTS, "activation": act}, _lrnn_choices()),
                           _lrnn_tasks(act), f"LRNN: products of learnable univariate components ({act} envelope)"))
    register(ModelSpec("hash", _hash, "table", _hypers(_HASH_DEFAULTS),
                       _HASH_TASKS, "Instant-NGP: multiresolution hash grid + small ReLU MLP"))


_register_builtins()
MODELS = tuple(_SPECS)   # the built-in families


def _make(name, in_features, out_features, hyper, device=None, dtype=None) -> INR:
    ctor = spec(name).constructor
    if ctor is None:
        raise InputError(f"model {name!r} is not built by inr.models.build (see the tool that registered it)")
    full = {**spec(name).hyper_defaults(), **hyper}   # the spec's defaults under the caller's options
    body, head, cplx = ctor(in_features, out_features, device=device, dtype=dtype, **full)
    config = {"name": name, "in_features": in_features, "out_features": out_features, **hyper}
    return INR(body, head, config, complex_out=cplx)


def _count_for(name, in_features, out_features, hyper) -> int:
    with torch.device("meta"):
        return count_params(_make(name, in_features, out_features, hyper))


def max_params() -> int:
    """The largest model :func:`build` makes: ``INR_MAX_PARAMS`` (default 100 million parameters, 0.4 GB in
    float32 and ~1.6 GB with Adam's moments and the gradient).  A larger model is refused before anything
    is allocated."""
    import os

    v = os.environ.get("INR_MAX_PARAMS", "")
    try:
        return int(float(v)) if v else 100_000_000
    except ValueError:
        raise InputError(f"INR_MAX_PARAMS must be a number, got {v!r}") from None


def check_size(name: str, n: int) -> None:
    """Refuse a model of ``n`` parameters above :func:`max_params`, with the memory estimate."""
    if n > max_params():
        raise InputError(f"{name} with these options has {n:,} parameters (~{16 * n / 2**30:.1f} GiB to train with "
                         f"Adam in float32), above the limit of {max_params():,}; lower the width or --params, "
                         f"or raise INR_MAX_PARAMS")


def solve_width(name: str, in_features: int, out_features: int, params: int, **hyper) -> int:
    """The width (hidden size or LRNN rank) whose parameter count is closest to ``params``."""
    arg = spec(name).width_arg
    f = lambda w: _count_for(name, in_features, out_features, {**hyper, arg: w})
    lo, hi = 1, 2
    while f(hi) < params:
        lo, hi = hi, hi * 2
        if hi > (spec(name).hyper(arg).high or 1 << 20):
            raise InputError(f"parameter budget {params} is too large for {name}")
        if hi >= 1 << 10 and f(hi) == f(hi // 2):   # saturated (a hash grid with every level dense)
            raise InputError(f"parameter budget {params:,} is above the largest {name} model for this signal "
                             f"and these options ({f(hi):,} parameters)")
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if f(mid) < params else (lo, mid)
    return min((lo, hi), key=lambda w: abs(f(w) - params))


def saturation(name: str, in_features: int, out_features: int, hyper: dict) -> int | None:
    """The parameter count a family stops growing at as its width grows (a hash grid with every level
    dense), or None when it keeps growing up to the largest width."""
    s = spec(name)
    top = s.hyper(s.width_arg).high or _BIG
    f = lambda w: _count_for(name, in_features, out_features, {**hyper, s.width_arg: w})
    a, b = f(top // 2), f(top)
    return b if a == b else None


def build(name: str, in_features: int, out_features: int, *, params: int | None = None,
          device=None, dtype=None, **hyper) -> INR:
    """Build a registry model.

    Args:
        name: one of :data:`MODELS`.
        in_features, out_features: coordinate and value dimensions.
        params: parameter budget; picks the width (``hidden`` or ``rank``) whose count is closest.
        **hyper: the family's hyper-parameters (``hidden``, ``hidden_layers``, ``w0``, ``rank``, ``dbar``, ...).
    """
    s = spec(name)
    hyper = s.check(hyper)
    if params is not None and params < 1:
        raise InputError(f"params must be positive, got {params}")
    try:
        if params is not None:
            hyper[s.width_arg] = solve_width(name, in_features, out_features, params, **hyper)
        check_size(name, _count_for(name, in_features, out_features, hyper))
        return _make(name, in_features, out_features, hyper, device=device, dtype=dtype)
    except TypeError as e:  # an option the family does not take
        raise InputError(f"bad option for model {name!r}: {e}") from None


def from_config(config: dict, device=None, dtype=None) -> INR:
    """Rebuild a model from its ``config`` (as saved in a run folder's config.json)."""
    cfg = dict(config)
    name, i, o = cfg.pop("name"), cfg.pop("in_features"), cfg.pop("out_features")
    return build(name, i, o, device=device, dtype=dtype, **cfg)


@dataclass
class ModelConfig:
    """Which family, how big, and its hyper-parameters (checked against the family's spec).

    ``params``: a parameter budget (the width -- hidden size, rank or table -- whose count is closest),
    ``"auto"`` (the family's rule for the signal's size, :meth:`inr.spec.TaskDefaults.auto_params`, made a
    number by :meth:`resolved`) or None when ``options`` sets the width; an explicit width in ``options``
    wins over the budget."""
    name: str = "hash"
    params: int | str | None = "auto"
    options: dict = field(default_factory=dict)

    def __post_init__(self):
        s = spec(self.name)
        self.options = s.check(dict(self.options or {}))
        if isinstance(self.params, str) and self.params.strip().lower() == "auto":
            self.params = "auto"
        elif self.params is not None:
            if isinstance(self.params, bool) or not isinstance(self.params, int) or self.params < 1:
                raise InputError(f"--params must be a positive integer, got {self.params!r}")
            if self.params > max_params():
                raise InputError(f"--params {self.params:,} is above the limit of {max_params():,} "
                                 f"(INR_MAX_PARAMS)")
        if s.width_arg in self.options:
            self.params = None   # an explicit width wins over the budget

    def resolved(self, task: str, values: int | None = None, features: tuple | None = None) -> "ModelConfig":
        """This config with ``params="auto"`` replaced by the family's budget for ``task`` and a signal of
        ``values`` values (points x channels); with ``features`` (in, out) it is capped at the largest count
        the family reaches with these options (a hash grid whose levels are all dense)."""
        if self.params != "auto":
            return self
        n = spec(self.name).task(task).auto_params(values)
        if features is not None:
            cap = saturation(self.name, *features, spec(self.name).resolve(task, self.options))
            n = n if cap is None else min(n, cap)
        return ModelConfig(self.name, n, self.options)

    def build(self, in_features: int, out_features: int, task: str, device=None, dtype=None, **context) -> INR:
        """The model for ``task`` (its spec's task defaults under :attr:`options`; ``params="auto"`` as for
        a 512 x 512 gray image unless :meth:`resolved` was given the signal's size)."""
        hyper = spec(self.name).resolve(task, self.options, **context)
        params = self.resolved(task).params
        return build(self.name, in_features, out_features, params=params, device=device, dtype=dtype, **hyper)


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

    cfg = check(config, {"name": Field(str, choices=names()), "in_features": Field(int, 1, 3),
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
