"""The training state and the callbacks of :func:`inr.train.fit`.

:class:`TrainState` is everything a resumed run needs (step, stage, optimizer and generator states,
history, timers, reached targets, ...); its :meth:`~TrainState.to_dict` / :meth:`~TrainState.from_dict`
are the checkpoint layout, written and read in this one place.

The callbacks are small objects that ``fit`` calls after every successful step, in this order:
:class:`Guard` (divergence guard), :class:`Targets` (time-to-target), :class:`History`,
:class:`Evaluation` (whole-signal evaluation, off the clock), :class:`Checkpoint` and
:class:`ProgressBar`.  Each ``on_step(run, out)`` gets the loop's shared context ``run`` (``inr.train.Run``:
``model``, ``optimizer``, ``cfg``, ``state``, ``clock``, ``now()``, ``off_the_clock()``, ...) and the
step's outcome ``out`` (:class:`Step`).  This module imports nothing from :mod:`inr.train`.
"""
from __future__ import annotations

import copy
import math
import os
import random
import sys
from dataclasses import dataclass, field, fields, replace
from typing import Callable

import numpy as np
import torch

from .errors import InputError
from .runfiles import save_torch


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


SOURCES = ("any", "batch", "eval")   # time-to-target is kept for either source and for both together


@dataclass
class TrainState:
    """Everything a resumed run needs.  While training, ``fit`` keeps the counters, timers, history,
    events and reached targets here; ``model``, ``optimizer``, ``rng`` (:func:`rng_state`), ``extra``
    (the caller's ``extra_state``) and ``elapsed`` are filled in only in the copy a checkpoint writes
    (the live ones are the model's, the optimizer's and the generators')."""
    step: int = 0                     # optimizer steps done (Adam steps + L-BFGS outer steps)
    stage: str = "adam"               # adam | lbfgs
    switch_step: int | None = None    # the step the L-BFGS stage began at
    stalls: int = 0                   # L-BFGS outer steps in a row that left every parameter unchanged
    elapsed: float = 0.0              # training seconds (evaluation excluded) at the checkpoint
    lr_scale: float = 1.0             # the divergence guard's cuts of the learning rate
    best_loss: float = math.inf       # lowest finite loss so far (the blow-up rule)
    n_finite: int = 0                 # finite losses seen
    last_loss: float = math.nan       # the loss the last step was computed from
    eval_seconds: float = 0.0         # time spent in evaluate()
    evaluations: int = 0
    next_eval: float = 0.0            # training seconds at which the next evaluation is due (eval_fraction)
    history: list = field(default_factory=list)
    events: list = field(default_factory=list)
    reached: dict = field(default_factory=dict)   # source -> {target: {"seconds", "step"} or None}
    model: dict | None = None
    optimizer: dict | None = None
    rng: dict | None = None
    extra: dict | None = None
    fingerprint: str | None = None    # what a checkpoint must match to be resumed (signal + model)
    seed: int | None = None           # the run's seed: a resume with another one is refused

    @classmethod
    def start(cls, targets) -> "TrainState":
        return cls(reached={src: {float(t): None for t in targets} for src in SOURCES})

    def to_dict(self) -> dict:
        """The checkpoint layout: one entry per field (tensors, numbers, strings, lists and dicts only)."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_dict(cls, d: dict) -> "TrainState":
        """Inverse of :meth:`to_dict`; KeyError / TypeError / ValueError for a dict of another layout."""
        missing = [f.name for f in fields(cls) if f.name not in d]
        if missing:
            raise KeyError(f"no {', '.join(missing)}")
        s = cls(**{f.name: d[f.name] for f in fields(cls)})
        s.step, s.stalls, s.n_finite, s.evaluations = int(s.step), int(s.stalls), int(s.n_finite), int(s.evaluations)
        s.switch_step = None if s.switch_step is None else int(s.switch_step)
        for name in ("elapsed", "lr_scale", "best_loss", "last_loss", "eval_seconds", "next_eval"):
            setattr(s, name, float(getattr(s, name)))
        s.stage, s.history, s.events = str(s.stage), list(s.history), list(s.events)
        s.reached = {str(src): {float(t): v for t, v in r.items()} for src, r in s.reached.items()}
        return s


@dataclass
class Step:
    """One step's outcome: ``bad`` (why it failed, for the guard) or the loss it was computed from, the
    loss function's info, the stage's history columns (``row``) and the training seconds after it."""
    bad: str | None = None
    loss: float = math.nan
    info: dict = field(default_factory=dict)
    row: dict = field(default_factory=dict)
    now: float = 0.0


class Guard:
    """The divergence guard.  It keeps a last good state (model and optimizer, snapshotted every
    ``cfg.guard_every`` Adam steps while every parameter is finite; the weights before each L-BFGS outer
    step), judges losses (:meth:`blown_up`), and on a bad step (:meth:`trip`) restores the good state,
    halves the learning rate and records the event; more than ``cfg.max_divergences`` events raise
    :class:`DivergenceError`.  :meth:`end` replaces non-finite final parameters by the good state."""

    def __init__(self, cfg):
        self.cfg, self.good = cfg, None

    def take(self, run) -> None:
        opt = None if run.state.stage == "lbfgs" else copy.deepcopy(run.optimizer.state_dict())
        self.good = copy.deepcopy(run.model.state_dict()), opt   # L-BFGS: a restore clears its memory

    def blown_up(self, run, loss: float) -> str | None:
        c, s = self.cfg, run.state
        blown = c.blowup_factor and s.n_finite >= c.blowup_after and s.best_loss > 0
        if blown and loss > c.blowup_factor * s.best_loss:
            return f"loss blow-up ({loss:.3g} > {c.blowup_factor:g} x lowest {s.best_loss:.3g})"
        return None

    def restore(self, run) -> None:
        run.model.load_state_dict(self.good[0])
        if run.state.stage == "lbfgs":
            run.new_lbfgs()
        elif self.good[1] is not None:
            run.optimizer.load_state_dict(self.good[1])

    def record(self, run, text: str, now: float) -> None:
        s = run.state
        s.events.append({"step": s.step, "event": text, "lr_scale": s.lr_scale})
        s.history.append({"step": s.step, "seconds": round(now, 4), "event": text, "lr_scale": s.lr_scale})

    def trip(self, run, bad: str, remedy: str) -> None:
        s = run.state
        s.lr_scale *= 0.5
        self.restore(run)
        self.record(run, f"{bad}: restored last good state, {remedy}", run.now())
        if not self.cfg.quiet:
            print(f"[{self.cfg.desc}] step {s.step}: {bad}; restored the last good state, {remedy} "
                  f"(x{s.lr_scale:g})", file=sys.stderr)
        if len(s.events) > self.cfg.max_divergences:
            raise DivergenceError(f"training diverged {len(s.events)} times; last at step {s.step} ({bad})")

    def on_step(self, run, out: Step) -> None:
        s = run.state
        s.best_loss, s.n_finite = min(s.best_loss, out.loss), s.n_finite + 1
        if s.stage == "lbfgs" or (s.step % self.cfg.guard_every == 0 and run.params_finite()):
            self.take(run)

    def end(self, run, seconds: float) -> None:
        if run.params_finite():
            return
        self.restore(run)
        self.record(run, "non-finite parameters after the last update: restored last good state", seconds)
        if not self.cfg.quiet:
            print(f"[{self.cfg.desc}] non-finite parameters after the last update; restored the last good state",
                  file=sys.stderr)
        if not run.params_finite():
            raise DivergenceError("training left non-finite parameters and no finite state to restore")


class Targets:
    """Time-to-target: the first step (and training second) at which ``values[cfg.target_key]`` crosses
    each of ``cfg.targets``, kept per source (``batch``: the loss function's info; ``eval``: the
    evaluation's values) and for both together (``any``)."""

    def __init__(self, cfg):
        self.key, self.mode = cfg.target_key, cfg.target_mode

    def record(self, run, values: dict, now: float, source: str) -> None:
        v = values.get(self.key)
        if v is None or not math.isfinite(float(v)):
            return
        for d in (run.state.reached["any"], run.state.reached[source]):
            for t in d:
                if d[t] is None and (float(v) >= t if self.mode == "max" else float(v) <= t):
                    d[t] = {"seconds": round(now, 4), "step": run.state.step}

    def on_step(self, run, out: Step) -> None:
        self.record(run, out.info, out.now, "batch")


class History:
    """One row per ``cfg.log_every`` Adam steps (and the last), one per L-BFGS outer step: ``step``,
    ``seconds``, ``loss``, the stage's columns and the loss function's info."""

    def __init__(self, cfg, total_steps: int):
        self.every, self.total = cfg.log_every, total_steps

    def on_step(self, run, out: Step) -> None:
        s = run.state
        if s.stage == "lbfgs" or s.step % self.every == 0 or s.step == self.total:
            s.history.append({"step": s.step, "seconds": round(out.now, 4), "loss": out.loss, **out.row, **out.info})


class Evaluation:
    """``evaluate(step) -> dict`` off the training clock with gradients disabled; its values go into the
    history (``eval_`` prefix) and the targets (source ``eval``), its time into ``state.eval_seconds``.

    Cadence: every ``every`` steps; or, with ``fraction`` (``TrainConfig.eval_fraction``), on training
    time: the first evaluation after the first step, then each one once the training time ``T`` reaches
    ``max(T_last + e / fraction, (E + e) / fraction)``, where ``e`` is the last evaluation's time and ``E``
    the total so far.  So after the second evaluation the evaluation time stays within ``fraction`` x the
    training time while evaluations take about equally long, and the run's total is at most
    ``max(fraction x T, e_first) + e_final``.  Never at the last step nor once the time budget is spent:
    :meth:`end` evaluates the final state."""

    def __init__(self, evaluate: Callable | None, every: int, fraction: float | None, targets: Targets,
                 total_steps: int):
        self.evaluate, self.every, self.fraction = evaluate, every, fraction
        self.targets, self.total = targets, total_steps

    def due(self, run) -> bool:
        now, seconds = run.now(), run.cfg.seconds
        if self.evaluate is None or run.state.step >= self.total or (seconds is not None and now >= seconds):
            return False   # the run stops here: the final evaluation follows
        if self.fraction:
            return now >= run.state.next_eval
        return bool(self.every) and run.state.step % self.every == 0

    def run(self, run, now: float) -> float:
        """Evaluate once; the seconds it took."""
        s, t = run.state, run.clock()
        with torch.no_grad():
            ev = self.evaluate(s.step)
        took = run.clock() - t
        s.eval_seconds, s.evaluations = s.eval_seconds + took, s.evaluations + 1
        self.targets.record(run, ev, now, "eval")
        s.history.append({"step": s.step, "seconds": round(now, 4), **{f"eval_{k}": v for k, v in ev.items()}})
        return took

    def on_step(self, run, out: Step) -> None:
        if not self.due(run):
            return
        with run.off_the_clock():
            took = self.run(run, out.now)
        if self.fraction:
            s = run.state
            s.next_eval = max(run.now() + took / self.fraction, (s.eval_seconds + took) / self.fraction)

    def end(self, run, seconds: float) -> None:
        if self.evaluate is not None:
            self.run(run, seconds)


class Checkpoint:
    """Every ``cfg.checkpoint_every`` steps, :class:`TrainState` with the model, optimizer and generator
    states (and the caller's ``extra_state``) to ``cfg.checkpoint_path``; :meth:`resume` reads it back
    (with ``cfg.resume``), refusing a checkpoint of another ``cfg.fingerprint``."""

    def __init__(self, cfg, extra_state: tuple[Callable[[], dict], Callable[[dict], None]] | None):
        self.path, self.every, self.fingerprint = cfg.checkpoint_path, cfg.checkpoint_every, cfg.fingerprint
        self.seed = cfg.seed
        self.get, self.set = extra_state if extra_state is not None else (None, None)
        self.resuming = bool(cfg.resume and self.path and os.path.exists(self.path))

    def on_step(self, run, out: Step) -> None:
        if self.path and self.every and run.state.step % self.every == 0:
            save_torch(self.state(run).to_dict(), self.path)

    def state(self, run) -> TrainState:
        return replace(run.state, elapsed=run.now(), model=run.model.state_dict(), optimizer=run.optimizer.state_dict(),
                       rng=rng_state(), extra=self.get() if self.get else None, fingerprint=self.fingerprint,
                       seed=self.seed)

    def resume(self, run) -> None:
        if not self.resuming:
            return
        d = load_checkpoint(self.path)
        if d.get("fingerprint") != self.fingerprint:
            raise CheckpointError(f"checkpoint {self.path} belongs to another run (different signal or model "
                                  f"settings); refusing to resume from it")
        if d.get("seed") is not None and d["seed"] != self.seed:
            raise CheckpointError(f"checkpoint {self.path} was made with --seed {d['seed']}, this run asks for "
                                  f"--seed {self.seed}; resume with the same seed")
        try:
            s = TrainState.from_dict(d)
            run.model.load_state_dict(s.model)
            if s.stage == "lbfgs":
                run.new_lbfgs()
            run.optimizer.load_state_dict(s.optimizer)
            set_rng_state(s.rng)
            if self.set is not None:
                self.set(s.extra)
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as e:
            raise CheckpointError(f"checkpoint {self.path} does not fit this run: "
                                  f"{' '.join(str(e).split())[:200]}") from None
        for src, reached in run.state.reached.items():   # targets of this run, filled in from the checkpoint
            reached.update(s.reached.get(src, {}))
        run.start(replace(s, model=None, optimizer=None, rng=None, extra=None, reached=run.state.reached))


def bar_budget(seconds: float | None, total_steps: int, now: float, step: int) -> tuple[str, float, float]:
    """``(unit, total, position)`` of the progress bar: training seconds when a time budget is set and is
    the one that will stop the run (it is further along than the step count), else steps."""
    if seconds is not None and now / seconds >= step / total_steps:
        return "s", float(seconds), round(min(now, seconds), 1)
    return "it", total_steps, step


class ProgressBar:
    """tqdm (silent with ``cfg.quiet`` or when stderr is no terminal; none without tqdm) whose total and
    ETA follow the budget that will stop the run (:func:`bar_budget`; the ETA is the average rate since
    the bar last switched between seconds and steps), with the loss and ``cfg.target_key`` as postfix."""

    def __init__(self, cfg, total_steps: int):
        self.cfg, self.total, self.bar, self.unit = cfg, total_steps, None, None

    def begin(self, run) -> None:
        if self.cfg.quiet or not sys.stderr.isatty():
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:  # progress is a convenience, never a requirement
            return
        self.unit, total, pos = bar_budget(self.cfg.seconds, self.total, run.now(), run.state.step)
        self.bar = tqdm(total=total, initial=pos, unit=self.unit, unit_scale=self.unit == "s", desc=self.cfg.desc,
                        dynamic_ncols=True, leave=False, smoothing=0)

    def show(self, run, now: float) -> None:
        unit, total, pos = bar_budget(self.cfg.seconds, self.total, now, run.state.step)
        if unit != self.unit:
            self.unit = unit
            self.bar.reset(total=total)
            self.bar.unit, self.bar.unit_scale = unit, unit == "s"
            self.bar.n = self.bar.initial = self.bar.last_print_n = pos
        self.bar.update(pos - self.bar.n)

    def on_step(self, run, out: Step) -> None:
        if self.bar is None:
            return
        post = {"loss": f"{out.loss:.3g}"}
        if self.cfg.target_key in out.info:
            post[self.cfg.target_key] = f"{out.info[self.cfg.target_key]:.2f}"
        self.bar.set_postfix(post, refresh=False)
        self.show(run, out.now)

    def end(self) -> None:
        if self.bar is not None:
            self.bar.close()
