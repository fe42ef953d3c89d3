"""Model-family specs: what each family takes and the defaults every tool uses for it.

A :class:`ModelSpec` sits beside its family's constructor in the registry (:mod:`inr.models`), the way
timm's ``default_cfg`` sits beside a model.  It holds

- the hyper-parameter schema (:class:`Hyper`: name, type, default, range, help), from which the command
  lines generate their model options and help texts, and against which every option is checked once;
- the defaults per task (:class:`TaskDefaults`, for ``image``, ``audio``, ``pde`` and ``ct``): the Adam
  learning rate, betas and eps, the CPU batch and the hyper-parameters the task changes (first-layer
  frequencies, CT's WIRE widths, the PDE frequencies that scale with the problem's ``n``).

Every tool asks the spec (``spec(name).task("audio").lr``) and holds no table of its own.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

from .errors import InputError

TASKS = ("image", "audio", "pde", "ct")
ADAM_BETAS = (0.9, 0.999)   # torch's Adam defaults, kept unless a family's task says otherwise
ADAM_EPS = 1e-8


@dataclass(frozen=True)
class Hyper:
    """One hyper-parameter: ``type`` (int, float, str or bool), default, inclusive ``low``/``high`` bounds
    (numbers) or ``choices`` (strings), and the help text shown by ``--help``."""
    name: str
    type: type
    default: Any
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple | None = None

    def check(self, value, family: str = ""):
        """``value`` converted to this type and checked; :class:`InputError` naming the option otherwise."""
        opt = "--" + self.name.replace("_", "-")
        where = f" ({family})" if family else ""
        if value is None:
            return None
        if self.type is dict:
            if not isinstance(value, dict):
                raise InputError(f"{opt}{where} must be a mapping of options, got {value!r}")
            return dict(value)
        if self.type is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0"):
                return value.lower() in ("true", "1")
            if not isinstance(value, bool):
                raise InputError(f"{opt}{where} must be true or false, got {value!r}")
            return value
        if self.type in (int, float):
            if isinstance(value, bool):
                raise InputError(f"{opt}{where} must be a number, got {value!r}")
            try:
                v = self.type(value)
            except (TypeError, ValueError, OverflowError):
                kind = "an integer" if self.type is int else "a number"
                raise InputError(f"{opt}{where} must be {kind}, got {value!r}") from None
            if self.type is int and isinstance(value, float) and v != value:
                raise InputError(f"{opt}{where} must be an integer, got {value!r}")
            if self.type is float and not math.isfinite(v):
                raise InputError(f"{opt}{where} must be a finite number, got {value!r}")
            if (self.low is not None and v < self.low) or (self.high is not None and v > self.high):
                raise InputError(f"{opt}{where} must be in [{_num(self.low)}, {_num(self.high)}], got {value!r}")
            return v
        v = str(value)
        if self.choices is not None and v not in self.choices:
            raise InputError(f"{opt}{where} must be one of {', '.join(self.choices)}, got {value!r}")
        return v


def _num(x) -> str:
    return "-inf" if x is None else f"{x:g}"


@dataclass(frozen=True)
class TaskDefaults:
    """A family's defaults for one task.  ``hyper``: hyper-parameters the task sets (a dict, or a function
    of the task's context, e.g. ``n`` and ``dim`` of a PDE problem, returning one).  ``cpu_batch``: random
    points per step on a CPU (None: every point); on CUDA fits use the full batch."""
    lr: float
    betas: tuple = ADAM_BETAS
    eps: float = ADAM_EPS
    cpu_batch: int | None = 4096
    hyper: Mapping | Callable[..., dict] = field(default_factory=dict)
    tv: float = 0.0          # CT: weight of the total-variation term on the INR's image
    lbfgs_points: int = 4096  # PDE: uniform points of the L-BFGS stage, drawn at the switch
    note: str = ""           # where the numbers come from (shown in docs, kept with the numbers)
    # ``--params auto``: a parameter count, or a function of the signal's number of values (points x
    # channels) returning one (:meth:`auto_params`)
    params: int | Callable[[int], int] = 200_000

    # random points per step on a CPU as a function of the model's parameter count (None: ``cpu_batch``)
    cpu_batch_rule: Callable[[int], int] | None = None

    def batch_for(self, params: int | None) -> int | None:
        """The CPU batch for a model of ``params`` parameters: ``cpu_batch_rule(params)`` or ``cpu_batch``."""
        if self.cpu_batch_rule is None or not isinstance(params, int):
            return self.cpu_batch
        return int(self.cpu_batch_rule(params))

    def auto_params(self, values: int | None) -> int:
        """The parameter budget ``--params auto`` picks for a signal of ``values`` values (None: unknown,
        the rule at 512 x 512 gray)."""
        p = self.params
        return int(p(values if values else 512 * 512) if callable(p) else p)


@dataclass(frozen=True)
class ModelSpec:
    """A model family: its constructor ``(in_features, out_features, device=, dtype=, **hyper) ->
    (body, head, complex_out)``, the width argument a parameter budget solves for, its hyper-parameters
    (whose ``default`` is the family's default, written only here: the constructor gets every
    hyper-parameter, the caller's options over :meth:`hyper_defaults`) and its per-task defaults."""
    name: str
    constructor: Callable | None
    width_arg: str
    hypers: tuple
    tasks: Mapping[str, TaskDefaults]
    summary: str = ""

    def hyper(self, name: str) -> Hyper:
        for h in self.hypers:
            if h.name == name:
                return h
        raise InputError(f"model {self.name!r} takes no option {name!r}; it takes: "
                         f"{', '.join(h.name for h in self.hypers)}")

    def hyper_defaults(self) -> dict:
        """Every hyper-parameter's default, by name."""
        return {h.name: h.default for h in self.hypers}

    def task(self, task: str) -> TaskDefaults:
        if task not in self.tasks:
            raise InputError(f"model {self.name!r} has no defaults for task {task!r} (it is set up for: "
                             f"{', '.join(self.tasks)})")
        return self.tasks[task]

    def defaults(self, task: str, **context) -> dict:
        """The hyper-parameters ``task`` sets for this family (``context``: e.g. ``n=4, dim=2`` for PDEs)."""
        h = self.task(task).hyper
        return dict(h(**context) if callable(h) else h)

    def check(self, options: Mapping) -> dict:
        """``options`` checked against the schema (unknown names, types, ranges): one clear error."""
        return {k: self.hyper(k).check(v, self.name) for k, v in options.items()}

    def resolve(self, task: str, options: Mapping | None = None, **context) -> dict:
        """Task defaults overridden by ``options`` (checked)."""
        return {**self.defaults(task, **context), **self.check(options or {})}
