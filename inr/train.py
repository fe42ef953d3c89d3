"""THE optimisation loop for every regression task (images, audio, CT, PDE, Runge).

``fit(model, loss_fn, TrainConfig(...))``: ``loss_fn(step)`` returns the loss tensor, or
``(loss, info)`` where ``info`` holds extra scalars for the history (e.g. ``psnr``).  The loop owns
seeding, device choice, the optimizer stages, the progress bar, time-to-target tracking, the divergence
guard, whole-signal evaluation, checkpoint/resume and the history.  It is written as **stages** (this
module: :class:`AdamStage`, :class:`LBFGSStage`) and **callbacks** (:mod:`inr.callbacks`: ``Guard``,
``Targets``, ``History``, ``Evaluation``, ``Checkpoint``, ``ProgressBar``) sharing one :class:`Run` (model,
optimizer, config, clock) and one :class:`~inr.callbacks.TrainState` (counters, timers, history, ...;
its ``to_dict`` / ``from_dict`` are the checkpoint layout).

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

Evaluation: ``fit(..., evaluate=)`` runs off the training clock, every ``eval_every`` steps, or, with
``cfg.eval_fraction``, on a time cadence that keeps evaluation time within that fraction of the training
time (the first one right after the first step, so time-to-target is still timed early; see
:class:`inr.callbacks.Evaluation`), and always once at the end.  The progress bar counts training seconds
when a time budget is set and will stop the run, else steps.

Checkpoints (``cfg.checkpoint_path``) hold tensors and plain values only and are loaded with
``weights_only=True``; ``cfg.fingerprint`` is stored in them and a resume with another fingerprint
raises :class:`CheckpointError`, as does a corrupt or truncated checkpoint.  A resumed run is bit-identical
to an uninterrupted one (also across the Adam -> L-BFGS switch) as long as nothing depends on the clock
(a time budget or a time schedule) and no divergence event falls between the checkpoint and the next guard
snapshot (the guard's good state is not part of the checkpoint).
"""
from __future__ import annotations

import csv
import math
import os
import random
import sys
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, replace
from typing import Callable, Iterable

import numpy as np
import torch
from torch import nn

from .errors import InputError
from .callbacks import (Checkpoint, CheckpointError, DivergenceError, Evaluation, Guard, History,  # noqa: F401
                        ProgressBar, Step, Targets, TrainState, bar_budget, load_checkpoint, rng_state,
                        set_rng_state)


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
    betas: tuple | None = None        # Adam's moment decay rates (None: torch's, inr.spec.ADAM_BETAS)
    eps: float | None = None          # Adam's denominator floor (None: torch's, inr.spec.ADAM_EPS)
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
    # whole-signal evaluations (fit's evaluate) on a time cadence instead of every eval_every steps: the
    # first right after the first step, then each once the training time allows it to keep the evaluation
    # time within this fraction of the training time (plus the final evaluation; inr.callbacks.Evaluation)
    eval_fraction: float | None = None

    def __post_init__(self):
        if self.steps <= 0:
            raise InputError(f"steps must be > 0, got {self.steps}")
        if self.seconds is not None and not self.seconds > 0:
            raise InputError(f"seconds must be > 0, got {self.seconds}")
        if self.lr is not None and not (math.isfinite(self.lr) and self.lr > 0):   # None: the caller's default
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
        if self.eval_fraction is not None and not 0 < self.eval_fraction < 1:
            raise ValueError(f"eval_fraction must be in (0, 1) or None, got {self.eval_fraction}")


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
    """SGD or Adam over ``params`` (tensors or parameter groups).  Adam uses torch's fused kernel where every
    parameter is a real floating-point tensor on the CPU or CUDA: measured on the loaded 2-core CPU (hash
    grid, 2048-point batches, 1 thread), one Adam step took 0.6 / 9.5 / 13.5 ms fused against 7.9 / 26.8 /
    124 ms for the default (foreach) path at 0.3 / 1 / 4 million parameters."""
    groups = [{**g, "params": list(g["params"]) if not torch.is_tensor(g["params"]) else [g["params"]]}
              if isinstance(g, dict) else g for g in params]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay)
    if cfg.lr is None:
        raise InputError("no learning rate: TrainConfig.lr is None (fit() fills in the model family's default)")
    from .spec import ADAM_BETAS, ADAM_EPS

    betas = ADAM_BETAS if cfg.betas is None else tuple(cfg.betas)
    eps = ADAM_EPS if cfg.eps is None else cfg.eps
    tensors = [p for g in groups for p in (g["params"] if isinstance(g, dict) else [g])]
    fused = bool(tensors) and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in tensors)
    return torch.optim.Adam(groups, lr=cfg.lr, betas=betas, eps=eps, weight_decay=cfg.weight_decay,
                            **({"fused": True} if fused else {}))


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


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}   # TrainConfig.clock -> the training clock


def _finite(x) -> bool:
    return bool(torch.isfinite(x).all()) if torch.is_tensor(x) else math.isfinite(x)


def _split(out) -> tuple:
    """``loss_fn``'s answer as ``(loss, info)``."""
    return out if isinstance(out, tuple) else (out, {})


def _floats(info: dict) -> dict:
    return {k: (float(v) if torch.is_tensor(v) else v) for k, v in info.items()}


class Run:
    """What the stages and callbacks of one :func:`fit` share: the model, the current stage's optimizer,
    the config, the :class:`~inr.callbacks.TrainState` and the training clock (``cfg.clock``; evaluation
    is kept off it with :meth:`off_the_clock`)."""

    def __init__(self, model: nn.Module, cfg: TrainConfig, optimizer: torch.optim.Optimizer):
        self.model, self.cfg, self.optimizer = model, cfg, optimizer
        self.params = [p for g in optimizer.param_groups for p in g["params"]]
        self.clock = CLOCKS[cfg.clock]
        self.total_steps = cfg.steps + cfg.lbfgs_steps
        self.start(TrainState.start(cfg.targets))

    def start(self, state: TrainState) -> None:
        """Train on from ``state`` (fresh, or read from a checkpoint): the clock resumes at its ``elapsed``."""
        self.state, self.t0 = state, self.clock() - state.elapsed

    def now(self) -> float:
        """Training seconds so far (evaluation excluded)."""
        return self.clock() - self.t0

    @contextmanager
    def off_the_clock(self):
        paused = self.clock()
        try:
            yield
        finally:
            self.t0 += self.clock() - paused

    def new_lbfgs(self) -> None:
        """A fresh L-BFGS optimizer (empty memory) over the trained parameters."""
        self.optimizer = make_lbfgs(self.params, self.cfg)

    def params_finite(self) -> bool:
        return all(bool(torch.isfinite(p).all()) for p in self.model.parameters())


class AdamStage:
    """``cfg.steps`` steps of the first-order optimizer (Adam or SGD) under the learning-rate schedule;
    with an L-BFGS stage after it and a time budget, it also ends after its share of the budget."""
    name, remedy = "adam", "halved lr"

    def __init__(self, loss_fn: Callable, post_step: Callable | None, cfg: TrainConfig, guard: Guard):
        self.loss_fn, self.post_step, self.guard = loss_fn, post_step, guard
        self.seconds = cfg.seconds * (1 - cfg.lbfgs_fraction) if cfg.seconds and cfg.lbfgs_steps else cfg.seconds

    def finished(self, run: Run, now: float) -> bool:
        cfg = run.cfg
        return run.state.step >= cfg.steps or bool(cfg.lbfgs_steps and cfg.seconds and now >= self.seconds)

    def step(self, run: Run, now: float) -> Step:
        cfg, s = run.cfg, run.state
        by_time = now / self.seconds if self.seconds else 0.0
        progress = {"steps": s.step / cfg.steps, "time": by_time}.get(cfg.schedule_by, max(s.step / cfg.steps, by_time))
        f = lr_factor(progress, cfg, s.step) * s.lr_scale
        for g in run.optimizer.param_groups:
            g["lr"] = g["base_lr"] * f
        run.optimizer.zero_grad(set_to_none=True)
        loss, info = _split(self.loss_fn(s.step))
        if not _finite(loss):
            return Step(bad="non-finite loss")
        bad = self.guard.blown_up(run, float(loss.detach()) if torch.is_tensor(loss) else float(loss))
        if bad is not None:
            return Step(bad=bad)
        loss.backward()
        if cfg.grad_clip:
            torch.nn.utils.clip_grad_norm_(run.model.parameters(), cfg.grad_clip)
        run.optimizer.step()
        if self.post_step is not None:
            self.post_step(s.step)
        s.step, s.last_loss = s.step + 1, float(loss.detach())
        row = {"lr": cfg.lr * f, "stage": "adam"} if cfg.lbfgs_steps else {"lr": cfg.lr * f}
        return Step(loss=s.last_loss, info=_floats(info), row=row, now=run.now())


class LBFGSStage:
    """``cfg.lbfgs_steps`` outer steps of L-BFGS on the deterministic ``loss_fn`` (fit's ``lbfgs_loss``)."""
    name, remedy = "lbfgs", "cleared the L-BFGS memory, halved its lr"

    def __init__(self, loss_fn: Callable, post_step: Callable | None, guard: Guard):
        self.loss_fn, self.post_step, self.guard = loss_fn, post_step, guard

    def finished(self, run: Run, now: float) -> bool:
        return run.state.step - run.state.switch_step >= run.cfg.lbfgs_steps

    def begin(self, run: Run) -> None:
        s, cfg = run.state, run.cfg
        s.stage, s.switch_step, s.stalls = "lbfgs", s.step, 0
        run.new_lbfgs()
        self.guard.take(run)
        if not cfg.quiet:
            print(f"[{cfg.desc}] step {s.step}: switching to L-BFGS ({cfg.lbfgs_steps} steps of up to "
                  f"{cfg.lbfgs_iter} iterations)", file=sys.stderr)

    def step(self, run: Run, now: float) -> Step:
        s, lr = run.state, run.cfg.lbfgs_lr * run.state.lr_scale
        for g in run.optimizer.param_groups:
            g["lr"] = lr
        losses: list[float] = []
        infos: list[dict] = []

        def closure():
            run.optimizer.zero_grad(set_to_none=True)
            loss, info = _split(self.loss_fn(s.step))
            if not infos:
                infos.append(info)
            losses.append(float(loss.detach()))
            loss.backward()
            return loss

        before = [p.detach().clone() for p in run.params]
        run.optimizer.step(closure)
        if not all(math.isfinite(v) for v in losses):
            return Step(bad="L-BFGS non-finite loss")
        if not run.params_finite():
            return Step(bad="L-BFGS non-finite parameters")
        bad = self.guard.blown_up(run, losses[0])
        if bad is not None:
            return Step(bad=f"L-BFGS {bad}")
        if self.post_step is not None:
            self.post_step(s.step)
        if all(torch.equal(a, p) for a, p in zip(before, run.params)):
            s.stalls += 1
            run.new_lbfgs()   # clear the memory; a second stall in a row ends the run
        else:
            s.stalls = 0
        s.step, s.last_loss = s.step + 1, losses[0]
        return Step(loss=losses[0], info=_floats(infos[0] if infos else {}),
                    row={"lr": lr, "stage": "lbfgs", "evals": len(losses)}, now=run.now())


@dataclass
class FitHooks:
    """The caller's optional pieces of a :func:`fit` (each also a keyword of ``fit`` itself).

    Attributes:
        param_groups: optimizer parameter groups (e.g. ReLinear's); each may carry its own ``lr``, which
            the schedule scales.  Default: all of ``model.parameters()``.
        optimizer: a ready optimizer instead of Adam/SGD from ``cfg``.
        evaluate: ``step -> dict`` run every ``eval_every`` steps (or on ``cfg.eval_fraction``'s time
            cadence) and at the end, off the clock, with gradients disabled; its values go into the
            history (``eval_`` prefix) and ``time_to_target_eval``; its time is ``FitResult.eval_seconds``.
            ``time_to_target`` is whichever source reached a target first.
        eval_every: steps between evaluations (0: only the time cadence / the end).
        post_step: ``step -> None`` after each optimizer step (e.g. ReLinear-sw shrinkage).
        extra_state: ``(get, set)`` for state of the caller that a resumed run needs (a private sampler
            generator, a running best): ``get()`` -> a dict of tensors / plain values stored in each
            checkpoint, ``set(d)`` called with it on resume.
        lbfgs_loss: the loss of the L-BFGS stage, same shape as ``loss_fn``; it must be deterministic (the
            full batch, or one fixed set of points), since the line search compares values of it.
            Default: ``loss_fn``, which must then be deterministic itself.
    """
    param_groups: Iterable | None = None
    optimizer: torch.optim.Optimizer | None = None
    evaluate: Callable | None = None
    eval_every: int = 0
    post_step: Callable | None = None
    extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None = None
    lbfgs_loss: Callable | None = None


def fit(model: nn.Module, loss_fn: Callable, cfg: TrainConfig, hooks: FitHooks | None = None,
        **hook_options) -> FitResult:
    """Minimise ``loss_fn(step)`` over the parameters of ``model``: the stages, schedule, guard,
    evaluation cadence and checkpoints are described in the module docstring.

    Args:
        model: already on its device (see :func:`resolve_device`); the caller seeds before building it.
        loss_fn: ``step -> loss`` or ``step -> (loss, info)``; info values are logged to the history and
            ``info[cfg.target_key]`` drives time-to-target (``FitResult.time_to_target_batch``).
        hooks, **hook_options: the optional pieces (:class:`FitHooks`: ``param_groups``, ``optimizer``,
            ``evaluate``, ``eval_every``, ``post_step``, ``extra_state``, ``lbfgs_loss``), as one object
            and/or as keywords (``fit(model, loss_fn, cfg, evaluate=f, eval_every=10)``).
    """
    h = replace(hooks or FitHooks(), **hook_options)
    param_groups, optimizer, evaluate, eval_every = h.param_groups, h.optimizer, h.evaluate, h.eval_every
    post_step, extra_state, lbfgs_loss = h.post_step, h.extra_state, h.lbfgs_loss
    if optimizer is None:
        optimizer = make_optimizer(param_groups if param_groups is not None else model.parameters(), cfg)
    for g in optimizer.param_groups:
        g.setdefault("base_lr", g["lr"])
    run = Run(model, cfg, optimizer)
    guard, targets, checkpoint = Guard(cfg), Targets(cfg), Checkpoint(cfg, extra_state)
    bar = ProgressBar(cfg, run.total_steps)
    evaluation = Evaluation(evaluate, eval_every, cfg.eval_fraction, targets, run.total_steps)
    callbacks = [guard, targets, History(cfg, run.total_steps), evaluation, checkpoint, bar]
    stages = [AdamStage(loss_fn, post_step, cfg, guard)]
    if cfg.lbfgs_steps:
        stages.append(LBFGSStage(lbfgs_loss if lbfgs_loss is not None else loss_fn, post_step, guard))
    checkpoint.resume(run)
    s, stage = run.state, stages[-1] if run.state.stage == "lbfgs" else stages[0]
    start_step, start_seconds, stopped_by = s.step, s.elapsed, "steps"
    guard.take(run)
    bar.begin(run)
    while True:
        now = run.now()
        if s.stalls >= 2:
            stopped_by = "converged"
            break
        if cfg.seconds is not None and now >= cfg.seconds:
            stopped_by = "seconds"
            break
        if stage.finished(run, now):
            if stage is stages[-1]:
                break
            stage = stages[stages.index(stage) + 1]
            stage.begin(run)
        out = stage.step(run, now)
        if out.bad is not None:
            guard.trip(run, out.bad, stage.remedy)
            continue
        for callback in callbacks:
            callback.on_step(run, out)
    bar.end()
    seconds = run.now()
    guard.end(run, seconds)
    final_loss, final_info = _final_loss(model, loss_fn, s.step)
    evaluation.end(run, seconds)
    done = s.step - start_step
    return FitResult(steps=s.step, seconds=seconds, final_loss=final_loss, history=s.history,
                     time_to_target={str(k): v for k, v in s.reached["any"].items()},
                     time_to_target_batch={str(k): v for k, v in s.reached["batch"].items()},
                     time_to_target_eval={str(k): v for k, v in s.reached["eval"].items()},
                     eval_seconds=s.eval_seconds, evaluations=s.evaluations, events=s.events,
                     seconds_per_step=(seconds - start_seconds) / done if done else float("nan"),
                     stopped_by=stopped_by, last_step_loss=s.last_loss, final_info=final_info)


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
