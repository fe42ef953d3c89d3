"""Classification networks by name: CIFAR ResNets, PURe, QResNet, ImageNet-style ResNet/PURe, Newton-ResNet.

``build(name, num_classes=10, in_channels=3, **hyper)`` returns a :class:`Classifier` whose ``.config``
rebuilds it (:func:`from_config`).  ``MODELS`` lists the names; ``train_defaults(name)`` gives the
paper's optimiser settings for the model's family.

Shortcuts (parameter counts follow the papers exactly; see tests/test_classify.py):

* CIFAR ResNet and QResNet: option A of He et al. (identity; on a shape change, stride-2 subsampling
  and zero-padded channels, no parameters).
* PURe (CIFAR and ImageNet style), ImageNet-style ResNet, Newton-ResNet: option B (1x1 conv + BN on a
  shape change), so PURe-n = ResNet-n (same shortcut) + one ``theta`` per block.

Exact counts (10 classes): ResNet20 269,722 (0.27M), QResNet20 806,266 (0.81M), PURe20 272,483,
PURe272 4,355,681 (4.36M); ResNet18 11,181,642 with the ImageNet stem (11,689,512 with 1000 classes;
11,173,962 with the CIFAR stem), PURe18 = ResNet18 + 8; Newton-ResNet [2, 2, 1, 1] (CIFAR stem) 6,012,240.
"""
from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from inr.layers import ConvPU, NewtonBlock, QuadraticConv2d
from inr.errors import InputError


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


def _norm(norm: str, c: int) -> nn.Module:
    if norm == "bn":
        return nn.BatchNorm2d(c)
    if norm == "none":
        return nn.Identity()
    raise InputError(f"norm must be 'bn' or 'none', got {norm!r}")


class ShortcutA(nn.Module):
    """Parameter-free shortcut: stride-``s`` subsampling, channels zero-padded to ``out_channels``."""

    def __init__(self, in_channels: int, out_channels: int, stride: int):
        super().__init__()
        self.pad, self.stride = out_channels - in_channels, stride

    def forward(self, x):
        x = x[:, :, ::self.stride, ::self.stride]
        return F.pad(x, (0, 0, 0, 0, self.pad // 2, self.pad - self.pad // 2))


def _shortcut(kind: str, cin: int, cout: int, stride: int, norm: str) -> nn.Module:
    if stride == 1 and cin == cout:
        return nn.Identity()
    if kind == "A":
        return ShortcutA(cin, cout, stride)
    if kind == "B":
        return nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _norm(norm, cout))
    raise InputError(f"shortcut must be 'A' or 'B', got {kind!r}")


class BasicBlock(nn.Module):
    """ResNet basic block ``relu(s(x) + BN(conv(relu(BN(conv(x))))))``; ``quadratic=True`` makes both 3x3
    convs :class:`QuadraticConv2d` with bias (QResNet) and ``rezero=True`` scales the residual by a
    learnable ``alpha`` initialised to 0."""

    def __init__(self, cin, cout, stride=1, shortcut="A", norm="bn", quadratic=False, rezero=False,
                 activation="relu"):
        super().__init__()
        if quadratic:
            self.conv1 = QuadraticConv2d(cin, cout, 3, stride, 1, bias=True)
            self.conv2 = QuadraticConv2d(cout, cout, 3, 1, 1, bias=True)
        else:
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn1, self.bn2 = _norm(norm, cout), _norm(norm, cout)
        self.act = nn.ReLU() if activation == "relu" else nn.Identity()
        self.shortcut = _shortcut(shortcut, cin, cout, stride, norm)
        self.alpha = nn.Parameter(torch.zeros(())) if rezero else None

    def forward(self, x):
        f = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        if self.alpha is not None:
            f = self.alpha * f
        return self.act(self.shortcut(x) + f)


class PUReBlock(nn.Module):
    """Product-unit residual block ``s(x) + BN(ConvPU3x3(BN(conv3x3(x))))``; no activation anywhere."""

    def __init__(self, cin, cout, stride=1, shortcut="B", norm="bn", pu_init_a=None):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _norm(norm, cout)
        self.pu = ConvPU(cout, cout, 3, 1, 1) if pu_init_a is None else ConvPU(cout, cout, 3, 1, 1, init_a=pu_init_a)
        self.bn2 = _norm(norm, cout)
        self.shortcut = _shortcut(shortcut, cin, cout, stride, norm)

    def forward(self, x):
        return self.shortcut(x) + self.bn2(self.pu(self.bn1(self.conv1(x))))


class Classifier(nn.Module):
    """stem -> stages of residual blocks -> global average pool -> linear head."""

    def __init__(self, stem: nn.Module, stages: nn.Sequential, features: int, num_classes: int):
        super().__init__()
        self.stem, self.stages = stem, stages
        self.fc = nn.Linear(features, num_classes)
        self.config: dict = {}

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


def _stem(kind: str, cin: int, cout: int, norm: str, relu: bool) -> nn.Module:
    act = [nn.ReLU()] if relu else []
    if kind == "cifar":
        return nn.Sequential(nn.Conv2d(cin, cout, 3, 1, 1, bias=False), _norm(norm, cout), *act)
    if kind == "imagenet":
        return nn.Sequential(nn.Conv2d(cin, cout, 7, 2, 3, bias=False), _norm(norm, cout), *act,
                             nn.MaxPool2d(3, 2, 1))
    raise InputError(f"stem must be 'cifar' or 'imagenet', got {kind!r}")


def _init(model: nn.Module) -> None:
    """ResNet's initialisation (Kaiming-normal fan-out convs, BN = (1, 0)); quadratic layers keep their
    ReLinear initialisation and ConvPU its Kaiming-uniform one (neither is an ``nn.Conv2d`` here)."""
    skip = {id(s) for m in model.modules() if isinstance(m, QuadraticConv2d) for s in m.modules()}
    for m in model.modules():
        if id(m) in skip:
            continue
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _stages(block: Callable, blocks, widths, first: int) -> tuple[nn.Sequential, int]:
    stages, cin = [], first
    for i, (n, w) in enumerate(zip(blocks, widths)):
        layers = []
        for j in range(n):
            layers.append(block(cin, w, 2 if (j == 0 and i > 0) else 1))
            cin = w
        stages.append(nn.Sequential(*layers))
    return nn.Sequential(*stages), cin


def _check_blocks(blocks, stages: int):
    blocks = [int(b) for b in blocks]
    if len(blocks) != stages or min(blocks) < 1:
        raise InputError(f"blocks must be {stages} positive integers, got {blocks}")
    return blocks


def _options(ctor, options: dict) -> dict:
    """``ctor``'s keyword defaults (``ctor.defaults``) under ``options``; TypeError naming an unknown one."""
    unknown = sorted(set(options) - set(ctor.defaults))
    if unknown:
        raise TypeError(f"{ctor.__name__}() got an unexpected keyword argument {unknown[0]!r}")
    return {**ctor.defaults, **options}


def resnet_cifar(num_classes, in_channels, n, **options):
    """He et al.'s CIFAR ResNet-(6n+2): 3x3 stem, three stages of ``n`` blocks, widths w, 2w, 4w.
    ``options`` (defaults in ``resnet_cifar.defaults``): ``kind`` (resnet, qresnet or pure),
    ``base_width`` w, ``shortcut`` (A or B; default A, B for PURe), ``norm``, ``rezero``, ``activation``,
    ``pu_init_a``."""
    o = _options(resnet_cifar, options)
    kind, base_width, norm = o["kind"], o["base_width"], o["norm"]
    widths = [base_width, 2 * base_width, 4 * base_width]
    if kind == "pure":
        sc = o["shortcut"] or "B"
        block = lambda i, o_, s: PUReBlock(i, o_, s, sc, norm, o["pu_init_a"])  # noqa: E731
    else:
        sc = o["shortcut"] or "A"
        q = kind == "qresnet"
        block = lambda i, o_, s: BasicBlock(i, o_, s, sc, norm, q, o["rezero"], o["activation"])  # noqa: E731
    stem = _stem("cifar", in_channels, base_width, norm, relu=(kind != "pure" and o["activation"] == "relu"))
    stages, c = _stages(block, [n] * 3, widths, base_width)
    return Classifier(stem, stages, c, num_classes)


resnet_cifar.defaults = {"kind": "resnet", "base_width": 16, "shortcut": None, "norm": "bn", "rezero": False,
                         "activation": "relu", "pu_init_a": None}


def resnet_imagenet(num_classes, in_channels, blocks, **options):
    """ResNet18/34-style network (basic blocks, four stages w..8w); ``kind="pure"`` gives PURe18/34.
    ``options`` (defaults in ``resnet_imagenet.defaults``): ``kind``, ``base_width`` w, ``stem`` (imagenet or
    cifar), ``norm``, ``shortcut``, ``pu_init_a``."""
    o = _options(resnet_imagenet, options)
    kind, base_width, norm, shortcut = o["kind"], o["base_width"], o["norm"], o["shortcut"]
    blocks = _check_blocks(blocks, 4)
    widths = [base_width * 2 ** i for i in range(4)]
    if kind == "pure":
        block = lambda i, o_, s: PUReBlock(i, o_, s, shortcut, norm, o["pu_init_a"])  # noqa: E731
    else:
        block = lambda i, o_, s: BasicBlock(i, o_, s, shortcut, norm)  # noqa: E731
    st = _stem(o["stem"], in_channels, base_width, norm, relu=(kind != "pure"))
    stages, c = _stages(block, blocks, widths, base_width)
    return Classifier(st, stages, c, num_classes)


resnet_imagenet.defaults = {"kind": "resnet", "base_width": 64, "stem": "imagenet", "norm": "bn", "shortcut": "B",
                            "pu_init_a": None}


def newton_resnet(num_classes, in_channels, **options):
    """Newton-ResNet: ResNet18-style stages of :class:`NewtonBlock` (default blocks [2, 2, 1, 1], CIFAR stem).
    ``options`` (defaults in ``newton_resnet.defaults``): ``blocks``, ``base_width``, ``stem``, ``norm`` and
    the NewtonBlock options ``x_proj``, ``lin_proj``, ``activation``, ``phi2``, ``alpha_init``."""
    o = _options(newton_resnet, options)
    base_width, norm = o["base_width"], o["norm"]
    blocks = _check_blocks(o["blocks"], 4)
    widths = [base_width * 2 ** i for i in range(4)]
    block = lambda i, o_, s: NewtonBlock(i, o_, s, o["x_proj"], o["lin_proj"], o["activation"], o["phi2"],  # noqa: E731
                                         o["alpha_init"], norm)
    st = _stem(o["stem"], in_channels, base_width, norm, relu=(o["activation"] == "relu"))
    stages, c = _stages(block, blocks, widths, base_width)
    return Classifier(st, stages, c, num_classes)


newton_resnet.defaults = {"blocks": (2, 2, 1, 1), "base_width": 64, "stem": "cifar", "norm": "bn", "x_proj": 1,
                          "lin_proj": 1, "activation": "relu", "phi2": "none", "alpha_init": 0.0}


# name -> (constructor, fixed arguments, training-default family)
_REGISTRY: dict[str, tuple[Callable, dict, str]] = {}
for _n, _d in ((20, 3), (32, 5), (44, 7), (56, 9), (110, 18)):
    _REGISTRY[f"resnet{_n}"] = (resnet_cifar, {"n": _d, "kind": "resnet"}, "resnet-cifar")
    _REGISTRY[f"qresnet{_n}"] = (resnet_cifar, {"n": _d, "kind": "qresnet"}, "qresnet")
for _n, _d in ((20, 3), (32, 5), (44, 7), (56, 9), (110, 18), (272, 45)):
    _REGISTRY[f"pure{_n}"] = (resnet_cifar, {"n": _d, "kind": "pure"}, "pure-cifar")
for _n, _b in ((18, (2, 2, 2, 2)), (34, (3, 4, 6, 3))):
    _REGISTRY[f"resnet{_n}"] = (resnet_imagenet, {"blocks": _b, "kind": "resnet"}, "resnet-imagenet")
    _REGISTRY[f"pure{_n}"] = (resnet_imagenet, {"blocks": _b, "kind": "pure"}, "pure-imagenet")
_REGISTRY["newton-resnet"] = (newton_resnet, {}, "newton")
MODELS = tuple(_REGISTRY)

# The papers' optimiser settings.  milestones are fractions of the run (scaled to --epochs).
TRAIN_DEFAULTS = {
    # He et al. 2016 (CIFAR): lr 0.1, wd 1e-4, /10 at 32k and 48k of 64k iterations.
    "resnet-cifar": dict(lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(0.5, 0.75),
                         batch_size=128),
    # PURe, CIFAR-10: lr 0.01, wd 1e-3, /10 at epochs 80 and 120 of 160, batch 128.
    "pure-cifar": dict(lr=0.01, momentum=0.9, weight_decay=1e-3, schedule="step", milestones=(0.5, 0.75),
                       batch_size=128),
    # QResNet: ResNet's protocol with ReLinear-sg groups (g and b terms at 1e-5 while the rest uses 0.1).
    "qresnet": dict(lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(0.5, 0.75),
                    batch_size=128, lr_g=1e-5, lr_b=1e-5),
    # He et al. 2016 (ImageNet): lr 0.1, wd 1e-4, /10 at epochs 30 and 60 of 90, batch 256.
    "resnet-imagenet": dict(lr=0.1, momentum=0.9, weight_decay=1e-4, schedule="step", milestones=(1 / 3, 2 / 3),
                            batch_size=256),
    # PURe, ImageNet: lr 0.01, wd 1e-3, /10 at 30 and 60 of 90, batch 256.
    "pure-imagenet": dict(lr=0.01, momentum=0.9, weight_decay=1e-3, schedule="step", milestones=(1 / 3, 2 / 3),
                          batch_size=256),
    # Newton-ResNet, CIFAR-10: lr 0.1, /10 at epochs 40, 60, 80, 100 of 120, batch 128 (wd not stated; 5e-4).
    "newton": dict(lr=0.1, momentum=0.9, weight_decay=5e-4, schedule="step",
                   milestones=(1 / 3, 1 / 2, 2 / 3, 5 / 6), batch_size=128),
}


def family(name: str) -> str:
    _check_name(name)
    return _REGISTRY[name][2]


def train_defaults(name: str) -> dict:
    return dict(TRAIN_DEFAULTS[family(name)])


def _check_name(name: str) -> None:
    if name not in _REGISTRY:
        raise InputError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")


MAX_ARG_INT = 4096          # any integer --model-arg (widths, block counts, ...) and the class count
MAX_PARAMS = 200_000_000   # a model's parameter count, computed on the meta device before anything is allocated


def _check_hyper(name: str, hyper: dict) -> None:
    """Every integer model argument (alone or in a list) in [0, MAX_ARG_INT]; floats finite."""
    for k, v in hyper.items():
        vals = v if isinstance(v, (list, tuple)) else [v]
        for x in vals:
            if isinstance(x, bool):
                continue
            if isinstance(x, int) and not 0 <= x <= MAX_ARG_INT:
                raise InputError(f"{name}: model argument {k}={v!r} out of range (integers from 0 to {MAX_ARG_INT})")
            if isinstance(x, float) and not math.isfinite(x):
                raise InputError(f"{name}: model argument {k}={v!r} must be finite")


def build(name: str, num_classes: int = 10, in_channels: int = 3, *, device=None, **hyper) -> Classifier:
    """Build a registered network.  ``hyper`` overrides the constructor's keyword arguments
    (e.g. ``base_width``, ``norm``, ``stem``, ``blocks``, ``rezero``, ``x_proj``)."""
    _check_name(name)
    ctor, fixed, _ = _REGISTRY[name]
    clash = set(hyper) & set(fixed)
    if clash:
        raise InputError(f"{name}: {', '.join(sorted(clash))} is fixed by the model name")
    if not (1 <= num_classes <= MAX_ARG_INT and 1 <= in_channels <= 4):
        raise InputError(f"num_classes must be in [1, {MAX_ARG_INT}] and in_channels in [1, 4], got {num_classes}, "
                         f"{in_channels}")
    _check_hyper(name, hyper)
    try:
        with torch.device("meta"):   # the size first, allocating nothing
            n = sum(p.numel() for p in ctor(num_classes, in_channels, **fixed, **hyper).parameters())
        if n > MAX_PARAMS:
            raise InputError(f"{name} with {hyper or 'its defaults'} has {n:,} parameters, above the limit of "
                             f"{MAX_PARAMS:,} ({4 * n / 2**30:.1f} GiB of float32 weights)")
        model = ctor(num_classes, in_channels, **fixed, **hyper)
    except TypeError as e:  # an unknown hyper-parameter: say which ones exist
        allowed = [p for p in ctor.defaults if p not in fixed]
        raise InputError(f"{name}: bad model argument ({e}); allowed: {', '.join(allowed)}") from None
    _init(model)
    model.config = {"name": name, "num_classes": num_classes, "in_channels": in_channels, **hyper}
    return model.to(device) if device is not None else model


def from_config(config: dict, device=None) -> Classifier:
    c = dict(config)
    return build(c.pop("name"), c.pop("num_classes"), c.pop("in_channels"), device=device, **c)
