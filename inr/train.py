"""THE optimisation loop for every regression task (images, audio, CT, PDE, Runge).

``fit(model, loss_fn, TrainConfig(...))``: ``loss_fn(step)`` returns the loss tensor, or
``(loss, info)`` where ``info`` holds extra scalars for the history (e.g. ``psnr``).  The loop owns
seeding, device choice, Adam + learning-rate schedule, an optional L-BFGS stage after the Adam steps
(``TrainConfig.lbfgs_steps``), the progress bar, time-to-target tracking, the divergence guard,
checkpoint/resume and the history.
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
from .errors import InputError


class DivergenceError(RuntimeError):
    """Training kept producing non-finite (or blown-up) losses after repeated learning-rate cuts."""


class CheckpointError(InputError):
    """A checkpoint that cannot be resumed: corrupt, truncated, unsafe, or of another signal / model."""


def rng_state() -> dict:
    """The python, numpy and torch (CPU and CUDA) generator states as tensors and plain lists, so a
    checkpoint holding them loads with ``torch.load(..., weights_only=True)``."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [int(version), list(internal), gauss],
             "numpy": [str(name), torch.from_numpy(np.asarray(keys, dtype=np.int64)), int(pos), int(has_gauss),
                       float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    """Inverse of :func:`rng_state`."""
    version, internal, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path, map_location="cpu") -> dict:
    """``torch.load(path, weights_only=True)``: tensors and plain containers only, never arbitrary
    objects (a checkpoint whose pickle tries to run code is refused).  Any failure -> CheckpointError."""
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # noqa: BLE001 - truncated zip, unsafe pickle, wrong format, ...
        why = " ".join(str(e).split())
        if "Weights only load failed" in why or "Unsupported global" in why or "weights_only" in why:
            why = "it holds objects other than tensors and plain values (refused for safety)"
        raise CheckpointError(f"checkpoint {path} is corrupt, truncated or unsafe: {why[:200]}") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"checkpoint {path} is not a training checkpoint (got {type(state).__name__})")
    return state


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
        raise InputError(f"--device must be auto, cpu or cuda, got {device!r}")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise InputError("--device cuda was asked for but no CUDA device is available")
    return torch.device(device)


def _own_running_threads() -> int:
    """Threads of this process in state R (running / runnable) right now, from /proc/self/task."""
    n = 0
    try:
        for tid in os.listdir("/proc/self/task"):
            try:
                with open(f"/proc/self/task/{tid}/stat") as f:
                    stat = f.read()
            except OSError:
                continue
            if stat[stat.rindex(")") + 2:].startswith("R"):
                n += 1
    except OSError:
        return 1  # no /proc: count the thread asking
    return max(n, 1)


def running_elsewhere() -> int | None:
    """Threads of *other* processes runnable right now: the 4th field of /proc/loadavg ("R/T", runnable
    scheduling entities system-wide, counted at the moment of reading) minus this process's own running
    threads.  None where /proc/loadavg does not exist (not Linux)."""
    try:
        with open("/proc/loadavg") as f:
            runnable = int(f.read().split()[3].split("/")[0])
    except (OSError, IndexError, ValueError):
        return None
    return max(0, runnable - _own_running_threads())


def resolve_threads(threads, *, cpus: int | None = None, others: int | None | Callable = running_elsewhere):
    """Thread count to set (None: leave torch's default, i.e. use every core).

    ``threads`` is a positive int (returned as is) or ``"auto"``.  The auto rule: with ``k`` threads of
    other processes runnable *now* (:func:`running_elsewhere`, not the load average, which still counts
    our own just-finished work for minutes) on ``cpus`` cores, ``k == 0`` -> None (all cores);
    otherwise ``max(1, cpus - k)``: torch's worker threads synchronise at every operation, so a thread
    that has to share its core with another process makes all of them wait; keeping to the free cores
    avoids that (on a busy 2-core machine 2 threads ran many times slower than 1).  Where the reading is
    unavailable (not Linux), None.  ``cpus`` / ``others`` (an int or a callable) are injectable for tests.
    """
    if threads != "auto":
        return threads
    cpus = cpus or os.cpu_count() or 1
    k = others() if callable(others) else others
    if k is None or k <= 0:
        return None
    return max(1, cpus - k)


@dataclass
class TrainConfig:
    steps: int = 1000
    seconds: float | None = None      # time budget; training stops at whichever limit comes first
    # what `seconds` (and every time in the history) measures: "wall" (time.perf_counter) or "cpu"
    # (time.process_time, this process's CPU time, all threads): on a machine shared with other jobs, a
    # 1-thread run's CPU seconds are what an unshared core would have taken, while its wall time depends on load
    clock: str = "wall"
    lr: float = 1e-3
    lr_final: float = 0.1             # learning rate at the end, as a fraction of lr
    schedule: str = "cosine"          # cosine | exponential | constant
    schedule_by: str = "auto"         # progress of the schedule: steps | time | auto (the larger of both)
    warmup: int = 0                   # linear warm-up over this many steps
    optimizer: str = "adam"           # adam | sgd
    weight_decay: float = 0.0
    momentum: float = 0.9
    betas: tuple = (0.9, 0.999)       # Adam's moment decay rates
    eps: float = 1e-8                 # Adam's denominator floor
    grad_clip: float | None = None
    seed: int = 0
    device: str = "auto"
    targets: tuple = ()               # values of info[target_key] whose first crossing is timed
    target_key: str = "psnr"
    target_mode: str = "max"          # max: target reached when value >= target; min: when <=
    log_every: int = 1
    guard_every: int = 25             # how often the last good state is snapshotted
    max_divergences: int = 8
    blowup_factor: float | None = 1e4  # a finite loss above this x the lowest loss so far is a blow-up
    blowup_after: int = 10            # ... once this many finite losses have been seen
    checkpoint_every: int = 0
    checkpoint_path: str | None = None
    resume: bool = False
    fingerprint: str | None = None    # what a checkpoint must match to be resumed (signal + model)
    quiet: bool = False
    desc: str = "fit"
    # L-BFGS stage after the Adam stage (0: none).  One outer step = one LBFGS.step() call of up to
    # lbfgs_iter inner iterations (strong-Wolfe line search) on the full-batch loss (fit's lbfgs_loss).
    lbfgs_steps: int = 0              # outer L-BFGS steps after the `steps` Adam steps
    lbfgs_fraction: float = 0.5       # with a `seconds` budget: the share of it given to the L-BFGS stage
    lbfgs_lr: float = 1.0             # L-BFGS step length (not scheduled; halved by the divergence guard)
    lbfgs_history: int = 50           # curvature pairs kept
    lbfgs_iter: int = 10              # inner iterations per outer step

    def __post_init__(self):
        if self.steps <= 0:
            raise InputError(f"steps must be > 0, got {self.steps}")
        if self.seconds is not None and not self.seconds > 0:
            raise InputError(f"seconds must be > 0, got {self.seconds}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise InputError(f"learning rate must be a finite number > 0, got {self.lr}")
        if self.schedule not in ("cosine", "exponential", "constant"):
            raise InputError(f"schedule must be cosine, exponential or constant, got {self.schedule!r}")
        if self.schedule_by not in ("auto", "steps", "time"):
            raise InputError(f"schedule_by must be steps, time or auto, got {self.schedule_by!r}")
        if self.schedule_by == "time" and self.seconds is None:
            raise InputError("a schedule by time needs a time budget (seconds)")
        if self.warmup < 0:
            raise InputError(f"warmup must be >= 0 steps, got {self.warmup}")
        if self.clock not in ("wall", "cpu"):
            raise InputError(f"clock must be wall or cpu, got {self.clock!r}")
        if self.optimizer not in ("adam", "sgd"):
            raise InputError(f"optimizer must be adam or sgd, got {self.optimizer!r}")
        if self.lbfgs_steps < 0:
            raise InputError(f"lbfgs_steps must be >= 0, got {self.lbfgs_steps}")
        if not (math.isfinite(self.lbfgs_lr) and self.lbfgs_lr > 0):
            raise InputError(f"lbfgs_lr must be a finite number > 0, got {self.lbfgs_lr}")
        if not 0 < self.lbfgs_fraction < 1:
            raise InputError(f"lbfgs_fraction must be in (0, 1), got {self.lbfgs_fraction}")
        if self.lbfgs_history < 1 or self.lbfgs_iter < 1:
            raise InputError(f"lbfgs_history and lbfgs_iter must be >= 1, got {self.lbfgs_history}, "
                             f"{self.lbfgs_iter}")


@dataclass
class FitResult:
    """``final_loss`` is the loss of the final parameters (after the last update), evaluated once more
    after training with the generator state restored, so the run is unchanged; ``last_step_loss`` is the
    loss the last optimizer step was computed from (before that update).  ``events`` lists the
    divergence-guard actions; each also appears as a row of ``history`` with an ``event`` column."""
    steps: int
    seconds: float                       # training wall time (evaluation excluded)
    final_loss: float
    history: list = field(default_factory=list)
    time_to_target: dict = field(default_factory=dict)   # target -> {"seconds", "step"} or None
    # time_to_target counts both sources; these count one each: loss_fn's info (the batch the step was
    # computed from, before the update) and evaluate()'s values (off-the-clock evaluations)
    time_to_target_batch: dict = field(default_factory=dict)
    time_to_target_eval: dict = field(default_factory=dict)
    eval_seconds: float = 0.0                                # time spent in evaluate() (not in ``seconds``)
    evaluations: int = 0
    events: list = field(default_factory=list)           # divergence-guard actions
    seconds_per_step: float = float("nan")
    stopped_by: str = "steps"
    last_step_loss: float = float("nan")
    final_info: dict = field(default_factory=dict)       # loss_fn's info from the final-loss evaluation

    def write_history(self, path: str | os.PathLike) -> None:
        keys: list[str] = []
        for row in self.history:
            keys += [k for k in row if k not in keys]
        from .runfiles import replacing

        with replacing(path) as tmp, open(tmp, "w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=keys)
            w.writeheader()
            w.writerows(self.history)

    def summary(self) -> dict:
        d = asdict(self)
        d.pop("history")
        d.pop("final_info")
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
    return torch.optim.Adam(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay)


# L-BFGS tolerances: torch's defaults (1e-7 on the largest gradient entry, 1e-9 on the change of loss or
# step) end a float32 PINN stage at once, since its losses are ~1e-6 and its gradients ~1e-7 there.  These
# only stop it where nothing changes any more; a stage that no longer moves the parameters is caught by
# fit's stall rule (stopped_by="converged").
LBFGS_TOLERANCE_GRAD = 1e-15
LBFGS_TOLERANCE_CHANGE = 1e-20


def make_lbfgs(params, cfg: TrainConfig) -> torch.optim.LBFGS:
    """``torch.optim.LBFGS`` over ``params`` (one group) with the strong-Wolfe line search and the
    settings of ``cfg`` (``lbfgs_lr``, ``lbfgs_history``, ``lbfgs_iter``)."""
    return torch.optim.LBFGS(list(params), lr=cfg.lbfgs_lr, max_iter=cfg.lbfgs_iter, history_size=cfg.lbfgs_history,
                             line_search_fn="strong_wolfe", tolerance_grad=LBFGS_TOLERANCE_GRAD,
                             tolerance_change=LBFGS_TOLERANCE_CHANGE)


def _finite(x) -> bool:
    return bool(torch.isfinite(x).all()) if torch.is_tensor(x) else math.isfinite(x)


def _progress_bar(cfg: TrainConfig, initial: int):
    quiet = cfg.quiet or not sys.stderr.isatty()
    try:
        from tqdm.auto import tqdm
    except ImportError:  # progress is a convenience, never a requirement
        return None
    return tqdm(total=cfg.steps + cfg.lbfgs_steps, initial=initial, desc=cfg.desc, disable=quiet, dynamic_ncols=True, leave=False)


def fit(model: nn.Module, loss_fn: Callable, cfg: TrainConfig, *, param_groups: Iterable | None = None,
        optimizer: torch.optim.Optimizer | None = None, evaluate: Callable | None = None,
        eval_every: int = 0, post_step: Callable | None = None,
        extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None,
        lbfgs_loss: Callable | None = None) -> FitResult:
    """Minimise ``loss_fn(step)`` over the parameters of ``model``.

    Args:
        model: already on its device (see :func:`resolve_device`); the caller seeds before building it.
        loss_fn: ``step -> loss`` or ``step -> (loss, info)``; info values are logged to the history and
            ``info[cfg.target_key]`` drives time-to-target.
        param_groups: optimizer parameter groups (e.g. ReLinear's); each may carry its own ``lr``, which
            the schedule scales.  Default: all of ``model.parameters()``.
        optimizer: a ready optimizer instead of Adam/SGD from ``cfg``.
        evaluate: ``step -> dict`` run every ``eval_every`` steps and at the end, off the clock, with
            gradients disabled; its values go into the history (``eval_`` prefix) and may also hit
            targets.  Its wall time is reported in ``FitResult.eval_seconds``.  Targets are timed per source
            too: ``time_to_target_batch`` (loss_fn's info) and ``time_to_target_eval`` (evaluate's values);
            ``time_to_target`` is whichever came first.
        post_step: ``step -> None`` after each optimizer step (e.g. ReLinear-sw shrinkage).
        extra_state: ``(get, set)`` for state of the caller that a resumed run needs (a private sampler
            generator, a running best): ``get()`` -> a dict of tensors / plain values stored in each
            checkpoint, ``set(d)`` called with it on resume.
        lbfgs_loss: the loss of the L-BFGS stage, same shape as ``loss_fn``; it must be deterministic (the
            full batch, or one fixed set of points), since the line search compares values of it.
            Default: ``loss_fn``, which must then be deterministic itself.

    Stages: ``cfg.steps`` steps of Adam (or SGD), then, with ``cfg.lbfgs_steps``, that many outer steps of
    L-BFGS (:func:`make_lbfgs`; one outer step is one ``LBFGS.step`` of up to ``cfg.lbfgs_iter``
    iterations, so progress, history, guard and checkpoints work per outer step).  With a ``seconds``
    budget the Adam stage also ends once ``(1 - cfg.lbfgs_fraction) x seconds`` have passed, leaving the
    rest to L-BFGS.  History rows carry ``stage`` (``adam`` / ``lbfgs``), L-BFGS rows also ``evals`` (loss
    evaluations in that step); an L-BFGS row's ``loss`` is the loss at the start of the step, as for Adam.
    The schedule applies to the Adam stage only (its time horizon is the Adam stage's share); L-BFGS runs
    at ``cfg.lbfgs_lr``, over all parameters as one group (per-group learning rates and ``grad_clip`` do
    not apply to it; ``post_step`` still runs after each outer step).  An outer step that leaves every
    parameter unchanged clears the L-BFGS memory; a second one in a row ends the run with
    ``stopped_by="converged"``.

    Schedule: the learning rate follows ``cfg.schedule`` over the progress ``step / steps``
    (``schedule_by="steps"``), ``elapsed / seconds`` (``"time"``) or the larger of the two (``"auto"``),
    after ``cfg.warmup`` steps of linear warm-up.

    Divergence guard: every ``cfg.guard_every`` steps the state is snapshotted (only while every parameter
    is finite).  A step whose loss is non-finite, or a *blow-up* -- a finite loss above
    ``cfg.blowup_factor`` x the lowest loss seen so far, once ``cfg.blowup_after`` finite losses have been
    seen -- restores the last good state, halves the learning rate and is recorded (``FitResult.events``
    and a history row with an ``event`` column); more than ``cfg.max_divergences`` such events raise
    :class:`DivergenceError`.  In the L-BFGS stage the good state is the weights before each outer step; a
    step during which any loss evaluation was non-finite, whose starting loss is a blow-up, or that left
    non-finite parameters, restores them, clears the L-BFGS memory and halves ``lbfgs_lr`` (same event
    record and limit).  After the last step the parameters are checked as well: non-finite ones
    are replaced by the last good state (also recorded as an event).

    Checkpoints (``cfg.checkpoint_path``) hold tensors and plain values only and are loaded with
    ``weights_only=True``; ``cfg.fingerprint`` is stored in them and a resume with another fingerprint
    raises :class:`CheckpointError`, as does a corrupt or truncated checkpoint.
    """
    if optimizer is None:
        optimizer = make_optimizer(param_groups if param_groups is not None else model.parameters(), cfg)
    for g in optimizer.param_groups:
        g.setdefault("base_lr", g["lr"])
    history: list[dict] = []
    reached: dict = {float(t): None for t in cfg.targets}
    reached_by = {"batch": dict(reached), "eval": dict(reached)}
    eval_seconds, n_evals = 0.0, 0
    events: list[dict] = []
    start_step, elapsed, lr_scale = 0, 0.0, 1.0
    train_params = [p for g in optimizer.param_groups for p in g["params"]]
    stage, switch_step, stalls = "adam", None, 0   # L-BFGS: the step it began at, unchanged steps in a row
    total_steps = cfg.steps + cfg.lbfgs_steps
    # with a wall budget and an L-BFGS stage, the Adam stage (and its schedule) gets the first share of it
    adam_seconds = cfg.seconds * (1 - cfg.lbfgs_fraction) if cfg.seconds and cfg.lbfgs_steps else cfg.seconds

    ckpt = cfg.checkpoint_path
    best = math.inf        # lowest finite loss so far (blow-up rule)
    n_finite = 0
    if cfg.resume and ckpt and os.path.exists(ckpt):
        state = load_checkpoint(ckpt)
        if state.get("fingerprint") != cfg.fingerprint:
            raise CheckpointError(f"checkpoint {ckpt} belongs to another run (different signal or model "
                                  f"settings); refusing to resume from it")
        if "seed" in state and state["seed"] != cfg.seed:
            raise CheckpointError(f"checkpoint {ckpt} was made with --seed {state['seed']}, this run asks for "
                                  f"--seed {cfg.seed}; resume with the same seed")
        try:
            model.load_state_dict(state["model"])
            stage, switch_step = str(state.get("stage", "adam")), state.get("switch_step")
            stalls = int(state.get("stalls", 0))
            if stage == "lbfgs":
                optimizer = make_lbfgs(train_params, cfg)
            optimizer.load_state_dict(state["optimizer"])
            start_step, elapsed, lr_scale = int(state["step"]), float(state["elapsed"]), float(state["lr_scale"])
            history, events = list(state["history"]), list(state["events"])
            reached.update({float(k): v for k, v in state["reached"].items()})
            for src in reached_by:
                reached_by[src].update({float(k): v for k, v in state.get(f"reached_{src}", {}).items()})
            eval_seconds, n_evals = float(state.get("eval_seconds", 0.0)), int(state.get("evaluations", 0))
            best, n_finite = float(state.get("best_loss", math.inf)), int(state.get("n_finite", 0))
            set_rng_state(state["rng"])
            if extra_state is not None:
                extra_state[1](state["extra"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {ckpt} does not fit this run: {' '.join(str(e).split())[:200]}") \
                from None

    def params_finite() -> bool:
        return all(bool(torch.isfinite(p).all()) for p in model.parameters())

    def snapshot():
        if stage == "lbfgs":   # a restore clears the L-BFGS memory, so only the weights are kept
            return copy.deepcopy(model.state_dict()), None
        return copy.deepcopy(model.state_dict()), copy.deepcopy(optimizer.state_dict())

    def restore(state) -> None:
        nonlocal optimizer
        model.load_state_dict(state[0])
        if stage == "lbfgs" or state[1] is None:
            optimizer = make_lbfgs(train_params, cfg) if stage == "lbfgs" else optimizer
        else:
            optimizer.load_state_dict(state[1])

    good = snapshot()
    clock = time.process_time if cfg.clock == "cpu" else time.perf_counter
    bar = _progress_bar(cfg, start_step)
    step, loss_val, stopped_by = start_step, float("nan"), "steps"
    t0 = clock() - elapsed

    def crossed(value: float, target: float) -> bool:
        return value >= target if cfg.target_mode == "max" else value <= target

    def record_targets(info: dict, now: float, at_step: int, source: str):
        v = info.get(cfg.target_key)
        if v is None or not math.isfinite(float(v)):
            return
        for d in (reached, reached_by[source]):
            for t in d:
                if d[t] is None and crossed(float(v), t):
                    d[t] = {"seconds": round(now, 4), "step": at_step}

    def run_eval(at_step: int) -> dict:
        nonlocal eval_seconds, n_evals
        t = clock()
        with torch.no_grad():
            ev = evaluate(at_step)
        eval_seconds += clock() - t
        n_evals += 1
        return ev

    def record_event(at_step: int, text: str, now: float) -> None:
        events.append({"step": at_step, "event": text, "lr_scale": lr_scale})
        history.append({"step": at_step, "seconds": round(now, 4), "event": text, "lr_scale": lr_scale})

    def save_checkpoint() -> None:
        save_torch({"model": model.state_dict(), "optimizer": optimizer.state_dict(), "step": step,
                    "elapsed": clock() - t0, "lr_scale": lr_scale, "history": history,
                    "events": events, "reached": reached, "reached_batch": reached_by["batch"],
                    "reached_eval": reached_by["eval"], "eval_seconds": eval_seconds, "evaluations": n_evals,
                    "rng": rng_state(), "best_loss": best,
                    "n_finite": n_finite, "fingerprint": cfg.fingerprint, "seed": cfg.seed,
                    "stage": stage, "switch_step": switch_step, "stalls": stalls,
                    "extra": extra_state[0]() if extra_state is not None else None}, ckpt)

    def after_step(now: float, info: dict, row: dict) -> None:
        """Targets, history, guard snapshot, evaluation and checkpoint after a successful step."""
        nonlocal good, t0
        record_targets(info, now, step, "batch")
        if stage == "lbfgs" or step % cfg.log_every == 0 or step == total_steps:
            history.append({"step": step, "seconds": round(now, 4), "loss": loss_val, **row, **info})
        if stage == "adam" and step % cfg.guard_every == 0 and params_finite():
            good = snapshot()
        if evaluate is not None and eval_every and step % eval_every == 0 and step < total_steps:
            paused = clock()
            ev = run_eval(step)
            t0 += clock() - paused  # evaluation is off the clock
            record_targets(ev, now, step, "eval")
            history.append({"step": step, "seconds": round(now, 4), **{f"eval_{k}": v for k, v in ev.items()}})
        if ckpt and cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
            save_checkpoint()
        if bar is not None:
            bar.update(1)
            post = {"loss": f"{loss_val:.3g}"}
            if cfg.target_key in info:
                post[cfg.target_key] = f"{info[cfg.target_key]:.2f}"
            bar.set_postfix(post, refresh=False)

    def guard(at_step: int, bad: str, what: str) -> None:
        nonlocal lr_scale
        lr_scale *= 0.5
        restore(good)
        record_event(at_step, f"{bad}: restored last good state, {what}", clock() - t0)
        if not cfg.quiet:
            print(f"[{cfg.desc}] step {at_step}: {bad}; restored the last good state, {what} (x{lr_scale:g})",
                  file=sys.stderr)
        if len(events) > cfg.max_divergences:
            raise DivergenceError(f"training diverged {len(events)} times; last at step {at_step} ({bad})")

    def blown_up(lv: float) -> str | None:
        if cfg.blowup_factor and n_finite >= cfg.blowup_after and best > 0 and lv > cfg.blowup_factor * best:
            return f"loss blow-up ({lv:.3g} > {cfg.blowup_factor:g} x lowest {best:.3g})"
        return None

    full_loss = lbfgs_loss if lbfgs_loss is not None else loss_fn
    while True:
        now = clock() - t0
        if cfg.seconds is not None and now >= cfg.seconds:
            stopped_by = "seconds"
            break
        if stage == "adam" and (step >= cfg.steps or (cfg.lbfgs_steps and cfg.seconds and now >= adam_seconds)):
            if not cfg.lbfgs_steps:
                break
            stage, switch_step, stalls = "lbfgs", step, 0
            optimizer = make_lbfgs(train_params, cfg)
            good = snapshot()
            if not cfg.quiet:
                print(f"[{cfg.desc}] step {step}: switching to L-BFGS ({cfg.lbfgs_steps} steps of up to "
                      f"{cfg.lbfgs_iter} iterations)", file=sys.stderr)
        if stage == "lbfgs":
            if step - switch_step >= cfg.lbfgs_steps:
                break
            lr = cfg.lbfgs_lr * lr_scale
            for g in optimizer.param_groups:
                g["lr"] = lr
            losses: list[float] = []
            first: dict = {}

            def closure():
                optimizer.zero_grad(set_to_none=True)
                out = full_loss(step)
                loss, info = (out if isinstance(out, tuple) else (out, {}))
                if not losses:
                    first["info"] = info
                losses.append(float(loss.detach()))
                loss.backward()
                return loss

            before = [p.detach().clone() for p in train_params]
            optimizer.step(closure)
            bad = None
            if not all(math.isfinite(v) for v in losses):
                bad = "non-finite loss"
            elif not params_finite():
                bad = "non-finite parameters"
            else:
                bad = blown_up(losses[0])
            if bad is not None:
                guard(step, f"L-BFGS {bad}", "cleared the L-BFGS memory, halved its lr")
                continue
            if post_step is not None:
                post_step(step)
            if all(torch.equal(a, p) for a, p in zip(before, train_params)):
                stalls += 1
                optimizer = make_lbfgs(train_params, cfg)   # clear the memory; a second stall ends the run
            else:
                stalls = 0
            step += 1
            loss_val = losses[0]
            best, n_finite = min(best, loss_val), n_finite + 1
            good = snapshot()
            info = {k: (float(v) if torch.is_tensor(v) else v) for k, v in first.get("info", {}).items()}
            after_step(clock() - t0, info, {"lr": lr, "stage": "lbfgs", "evals": len(losses)})
            if stalls >= 2:
                stopped_by = "converged"
                break
            continue

        by_time = now / adam_seconds if adam_seconds else 0.0
        progress = {"steps": step / cfg.steps, "time": by_time}.get(cfg.schedule_by, max(step / cfg.steps, by_time))
        f = lr_factor(progress, cfg, step) * lr_scale
        for g in optimizer.param_groups:
            g["lr"] = g["base_lr"] * f

        optimizer.zero_grad(set_to_none=True)
        out = loss_fn(step)
        loss, info = (out if isinstance(out, tuple) else (out, {}))
        bad = None
        if not _finite(loss):
            bad = "non-finite loss"
        else:
            lv = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
            bad = blown_up(lv)
        if bad is not None:
            guard(step, bad, "halved lr")
            continue
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
        optimizer.step()
        if post_step is not None:
            post_step(step)
        step += 1
        loss_val = float(loss.detach())
        best, n_finite = min(best, loss_val), n_finite + 1
        now = clock() - t0
        info = {k: (float(v) if torch.is_tensor(v) else v) for k, v in info.items()}
        row = {"lr": cfg.lr * f, "stage": "adam"} if cfg.lbfgs_steps else {"lr": cfg.lr * f}
        after_step(now, info, row)
    if bar is not None:
        bar.close()
    seconds = clock() - t0
    if not params_finite():
        restore(good)
        record_event(step, "non-finite parameters after the last update: restored last good state", seconds)
        if not cfg.quiet:
            print(f"[{cfg.desc}] non-finite parameters after the last update; restored the last good state",
                  file=sys.stderr)
        if not params_finite():
            raise DivergenceError("training left non-finite parameters and no finite state to restore")
    final_loss, final_info = _final_loss(model, loss_fn, step)
    if evaluate is not None:
        ev = run_eval(step)
        record_targets(ev, seconds, step, "eval")
        history.append({"step": step, "seconds": round(seconds, 4), **{f"eval_{k}": v for k, v in ev.items()}})
    done = step - start_step
    return FitResult(steps=step, seconds=seconds, final_loss=final_loss, history=history,
                     time_to_target={str(k): v for k, v in reached.items()},
                     time_to_target_batch={str(k): v for k, v in reached_by["batch"].items()},
                     time_to_target_eval={str(k): v for k, v in reached_by["eval"].items()},
                     eval_seconds=eval_seconds, evaluations=n_evals, events=events,
                     seconds_per_step=(seconds - elapsed) / done if done else float("nan"), stopped_by=stopped_by,
                     last_step_loss=loss_val, final_info=final_info)


def _final_loss(model: nn.Module, loss_fn: Callable, step: int) -> tuple[float, dict]:
    """``(loss, info)`` of the final parameters: one more evaluation of ``loss_fn`` (random batches draw
    from the global generators, whose states are restored afterwards so nothing downstream changes; a
    loss_fn with its own generators advances them once).  NaN and {} if it fails."""
    saved = rng_state()
    info: dict = {}
    try:
        out = loss_fn(step)
        loss, info = out if isinstance(out, tuple) else (out, {})
        v = float(loss.detach()) if torch.is_tensor(loss) else float(loss)
        info = {k: (float(x) if torch.is_tensor(x) else x) for k, x in info.items()}
    except (RuntimeError, ValueError, TypeError, IndexError):
        v, info = float("nan"), {}
    finally:
        set_rng_state(saved)
    model.zero_grad(set_to_none=True)
    return v, info
