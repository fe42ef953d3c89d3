"""THE optimisation loop for every regression task (images, audio, CT, PDE, Runge).

``fit(model, loss_fn, TrainConfig(...))``: ``loss_fn(step)`` returns the loss tensor, or
``(loss, info)`` where ``info`` holds extra scalars for the history (e.g. ``psnr``).  The loop owns
seeding, device choice, Adam + learning-rate schedule, the progress bar, time-to-target tracking,
the divergence guard, checkpoint/resume and the history.
"""
from __future__ import annotations

import copy
import csv
import math
import os
import random
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .runfiles import save_torch


class DivergenceError(RuntimeError):
    """Training kept producing non-finite losses after repeated learning-rate cuts."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        return device
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def resolve_threads(threads) -> int | None:
    """Thread count to set (None: leave torch's default).  On a machine whose load average already
    reaches its CPU count, one thread: torch's worker threads then wait on descheduled peers."""
    if threads != "auto":
        return threads
    try:
        busy = os.getloadavg()[0] >= (os.cpu_count() or 1)
    except OSError:  # no load average on this platform
        busy = False
    return 1 if busy else None


@dataclass
class TrainConfig:
    steps: int = 1000
    seconds: float | None = None      # wall budget; training stops at whichever limit comes first
    lr: float = 1e-3
    lr_final: float = 0.1             # learning rate at the end, as a fraction of lr
    schedule: str = "cosine"          # cosine | exponential | constant
    warmup: int = 0
    optimizer: str = "adam"           # adam | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    targets: tuple = ()               # values of info[target_key] whose first crossing is timed
    target_key: str = "psnr"
    target_mode: str = "max"          # max: target reached when value >= target; min: when <=
    log_every: int = 1
    guard_every: int = 25             # how often the last good state is snapshotted
    max_divergences: int = 8
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    resume: bool = False
    quiet: bool = False
    desc: str = "fit"

    def __post_init__(self):
        if self.steps <= 0:
            raise ValueError(f"steps must be > 0, got {self.steps}")
        if self.seconds is not None and self.seconds <= 0:
            raise ValueError(f"seconds must be > 0, got {self.seconds}")
        if not self.lr > 0:
            raise ValueError(f"learning rate must be > 0, got {self.lr}")
        if self.schedule not in ("cosine", "exponential", "constant"):
            raise ValueError(f"schedule must be cosine, exponential or constant, got {self.schedule!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise ValueError(f"optimizer must be adam or sgd, got {self.optimizer!r}")


@dataclass
class FitResult:
    steps: int
    seconds: float                       # training wall time (evaluation excluded)
    final_loss: float
    history: list = field(default_factory=list)
    time_to_target: dict = field(default_factory=dict)   # target -> {"seconds", "step"} or None
    events: list = field(default_factory=list)           # divergence-guard actions
    seconds_per_step: float = float("nan")
    stopped_by: str = "steps"

    def write_history(self, path: str | os.PathLike) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        tmp = f"{path}.tmp"
        with open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)
        os.replace(tmp, path)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("history")
        return d


def lr_factor(progress: float, cfg: TrainConfig, step: int) -> float:
    """Multiplier of the base learning rate at ``progress`` in [0, 1]."""
    warm = min(1.0, (step + 1) / cfg.warmup) if cfg.warmup else 1.0
    p = min(max(progress, 0.0), 1.0)
    if cfg.schedule == "constant":
        f = 1.0
    elif cfg.schedule == "exponential":
        f = cfg.lr_final ** p
    else:
        f = cfg.lr_final + (1 - cfg.lr_final) * 0.5 * (1 + math.cos(math.pi * p))
    return warm * f


def make_optimizer(params, cfg: TrainConfig) -> torch.optim.Optimizer:
    groups = list(params)
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    return torch.optim.Adam(groups, lr=cfg.lr, weight_decay=cfg.weight_decay)


def _finite(x) -> bool:
    return bool(torch.isfinite(x).all()) if torch.is_tensor(x) else math.isfinite(x)


def _progress_bar(cfg: TrainConfig, initial: int):
    quiet = cfg.quiet or not sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a convenience, never a requirement
        return None
    return tqdm(total=cfg.steps, initial=initial, desc=cfg.desc, disable=quiet, dynamic_ncols=True, leave=False)


def fit(model: nn.Module, loss_fn: Callable, cfg: TrainConfig, *, param_groups: Iterable | None = None,
        optimizer: torch.optim.Optimizer | None = None, evaluate: Callable | None = None,
        eval_every: int = 0, post_step: Callable | None = None) -> FitResult:
    """Minimise ``loss_fn(step)`` over the parameters of ``model``.

    Args:
        model: already on its device (see :func:`resolve_device`); the caller seeds before building it.
        loss_fn: ``step -> loss`` or ``step -> (loss, info)``; info values are logged to the history and
            ``info[cfg.target_key]`` drives time-to-target.
        param_groups: optimizer parameter groups (e.g. ReLinear's); each may carry its own ``lr``, which
            the schedule scales.  Default: all of ``model.parameters()``.
        optimizer: a ready optimizer instead of Adam/SGD from ``cfg``.
        evaluate: ``step -> dict`` run every ``eval_every`` steps and at the end, off the clock, with
            gradients disabled; its values go into the history and may also hit targets.
        post_step: ``step -> None`` after each optimizer step (e.g. ReLinear-sw shrinkage).
    """
    if optimizer is None:
        optimizer = make_optimizer(param_groups if param_groups is not None else model.parameters(), cfg)
    for g in optimizer.param_groups:
        g.setdefault("base_lr", g["lr"])
    history: list[dict] = []
    reached: dict = {float(t): None for t in cfg.targets}
    events: list[dict] = []
    start_step, elapsed, lr_scale = 0, 0.0, 1.0

    ckpt = cfg.checkpoint_path
    if cfg.resume and ckpt and os.path.exists(ckpt):
        state = torch.load(ckpt, map_location="cpu", weights_only=False)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        start_step, elapsed, lr_scale = state["step"], state["elapsed"], state["lr_scale"]
        history, events = state["history"], state["events"]
        reached.update({float(k): v for k, v in state["reached"].items()})
        torch.set_rng_state(state["torch_rng"])
        np.random.set_state(state["numpy_rng"])
        random.setstate(state["python_rng"])

    def snapshot():
        return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())

    good = snapshot()
    bar = _progress_bar(cfg, start_step)
    step, loss_val, stopped_by = start_step, float("nan"), "steps"
    t0 = time.perf_counter() - elapsed

    def crossed(value: float, target: float) -> bool:
        return value >= target if cfg.target_mode == "max" else value <= target

    def record_targets(info: dict, now: float, at_step: int):
        v = info.get(cfg.target_key)
        if v is None or not math.isfinite(float(v)):
            return
        for t in reached:
            if reached[t] is None and crossed(float(v), t):
                reached[t] = {"seconds": round(now, 4), "step": at_step}

    while step < cfg.steps:
        now = time.perf_counter() - t0
        if cfg.seconds is not None and now >= cfg.seconds:
            stopped_by = "seconds"
            break
        progress = max(step / cfg.steps, now / cfg.seconds if cfg.seconds else 0.0)
        f = lr_factor(progress, cfg, step) * lr_scale
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f

        optimizer.zero_grad(set_to_none=True)
        out = loss_fn(step)
        loss, info = (out if isinstance(out, tuple) else (out, {}))
        if not _finite(loss):
            lr_scale *= 0.5
            model.load_state_dict(good[0])
            optimizer.load_state_dict(good[1])
            events.append({"step": step, "event": "non-finite loss: restored last good state, halved lr",
                           "lr_scale": lr_scale})
            print(f"[{cfg.desc}] step {step}: non-finite loss; restored the last good state and halved the "
                  f"learning rate (now x{lr_scale:g})", file=sys.stderr)
            if len(events) > cfg.max_divergences:
                raise DivergenceError(f"training diverged {len(events)} times; last at step {step}")
            continue
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if post_step is not None:
            post_step(step)
        step += 1
        loss_val = float(loss.detach())
        now = time.perf_counter() - t0
        info = {k: (float(v) if torch.is_tensor(v) else v) for k, v in info.items()}
        record_targets(info, now, step)
        if step % cfg.log_every == 0 or step == cfg.steps:
            history.append({"step": step, "seconds": round(now, 4), "loss": loss_val, "lr": cfg.lr * f, **info})
        if step % cfg.guard_every == 0:
            good = snapshot()
        if evaluate is not None and eval_every and step % eval_every == 0 and step < cfg.steps:
            paused = time.perf_counter()
            with torch.no_grad():
                ev = evaluate(step)
            t0 += time.perf_counter() - paused  # evaluation is off the clock
            record_targets(ev, now, step)
            history.append({"step": step, "seconds": round(now, 4), **{f"eval_{k}": v for k, v in ev.items()}})
        if ckpt and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                          "elapsed": time.perf_counter() - t0, "lr_scale": lr_scale, "history": history,
                          "events": events, "reached": reached, "torch_rng": torch.get_rng_state(),
                          "numpy_rng": np.random.get_state(), "python_rng": random.getstate()}, ckpt)
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{loss_val:.3g}"}
            if cfg.target_key in info:
                post[cfg.target_key] = f"{info[cfg.target_key]:.2f}"
            bar.set_postfix(post, refresh=False)
    if bar is not None:
        bar.close()
    seconds = time.perf_counter() - t0
    if evaluate is not None:
        with torch.no_grad():
            ev = evaluate(step)
        record_targets(ev, seconds, step)
        history.append({"step": step, "seconds": round(seconds, 4), **{f"eval_{k}": v for k, v in ev.items()}})
    done = step - start_step
    return FitResult(steps=step, seconds=seconds, final_loss=loss_val, history=history,
                     time_to_target={str(k): v for k, v in reached.items()}, events=events,
                     seconds_per_step=(seconds - elapsed) / done if done else float("nan"), stopped_by=stopped_by)
