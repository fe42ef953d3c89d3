"""The PINN solve: a problem, a model, the residual loss, :func:`inr.train.fit`, and the run folder.

Loss = mean of the squared scaled residual over interior collocation points, plus (boundary
"penalty") ``penalty * mean((u - g)^2)`` over boundary points.  Collocation points are uniform,
drawn once or (``resample``) afresh every step from a generator seeded by ``seed``; or (``sampling="rad"``)
redrawn every ``rad_every`` steps by residual-based adaptive sampling (:func:`rad_draw`).  An optional
L-BFGS stage (``lbfgs_steps``) follows the Adam steps on one fixed set of points.  The defaults are the
Poisson study's recipe (fresh points every Adam step, then L-BFGS on 4096 uniform points for 70 % of a
time budget).  Errors are measured on a dense uniform grid (boundary included), which random training
points never hit, against the exact solution, or (problems without one) against a finite-difference
reference (:mod:`pde.reference`) on its grid; the residual and the boundary error on held-out points are
always reported.

``solve(config_or_problem, ...) -> Solution`` (``.model``, ``.metrics``, ``.history``, ``.predict``,
``.save``).
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from inr.errors import InputError
from inr.runfiles import versions, write_json
from inr.train import FitResult, TrainConfig, fit, resolve_device, seed_everything

from . import models, problems
from .equations import EquationSpec
from .operators import LAPLACIAN_MODES, Ansatz, choose_laplacian, residual
from inr.errors import InputError

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Per-family PDE defaults (Adam lr, the frequencies scaled with n, the L-BFGS stage's points) live in each
# family's spec: inr.models.spec(name).task("pde").


# option bounds (issue: every input checked at the door); sizes beyond them are refused before allocating
MAX_POINTS = 10_000_000
MAX_PARAMS = 100_000_000
MAX_WIDTH = 100_000          # hidden, rank, width, n_freqs, grid
MAX_LAYERS = 64              # hidden_layers, depth, dbar, k
MAX_FREQUENCY = 1e6          # w0, w0_first, scale, component_std
MIN_FREQUENCY = 1e-6         # SIREN's init divides by w0: 1e-310 overflows to inf
MAX_EVAL_POINTS = 1 << 24    # evaluation grid points (all axes together)
DEFAULT_EVAL_RES = {1: 8193, 2: 256, 3: 64}
HYPER_INT = {"hidden": (1, MAX_WIDTH), "hidden_layers": (0, MAX_LAYERS), "rank": (1, MAX_WIDTH),
             "depth": (1, MAX_LAYERS), "dbar": (1, MAX_LAYERS), "width": (1, MAX_WIDTH), "grid": (1, MAX_WIDTH),
             "k": (1, MAX_LAYERS), "n_freqs": (1, 1000)}
HYPER_FLOAT = ("w0", "w0_first", "component_std", "scale")


@dataclass
class SolveConfig:
    problem: str = "poisson2d"                   # a registered problem (ignored when `equation` is given)
    n: int = 1
    equation: EquationSpec | None = None         # a problem written down (pde.equations); replaces `problem`
    model: str = "lrnn-siren"
    params: int | None = 16000
    hyper: dict = field(default_factory=dict)    # model options; missing ones come from the family's spec (task "pde")
    boundary: str = "exact"                      # exact | penalty
    penalty: float = 100.0                       # boundary weight (penalty mode)
    points: int = 1024                           # interior collocation points
    boundary_points: int | None = None           # penalty mode; default points // 4
    resample: bool | None = None                 # fresh uniform points every Adam step; None: yes (uniform sampling)
    steps: int | None = None                     # Adam steps; None: 1,000,000 with `seconds` (the budget decides), else 2000
    seconds: float | None = None
    lr: float | None = None                      # default: the family's spec, task("pde").lr
    lr_final: float = 0.1
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    # grid points per axis; default 256 (2-D), 8193 (1-D); without an exact solution: the intervals of the
    # coarsest finite-difference grid along the longest side (the reference and its grid have 2x and 4x that)
    eval_res: int | None = None
    eval_every: int = 0
    residual_points: int = 4096                  # held-out interior points for the final residual
    checkpoint_every: int = 0                    # checkpoint every N steps (needs a checkpoint path)
    # auto | forward | reverse (operators.choose_laplacian).  Not in the checkpoint fingerprint: it changes
    # the arithmetic (rounding-level differences), not the problem, data or model, like threads or device
    laplacian: str = "auto"
    quiet: bool = False
    sampling: str = "uniform"                    # uniform | rad (residual-based adaptive, see rad_draw)
    rad_every: int = 100                         # rad: redraw the points every N Adam steps
    rad_pool: int = 8                            # rad: candidate pool = rad_pool x points, uniform
    rad_k: float = 1.0                           # rad: p ~ |r|^k / mean|r|^k + c
    rad_c: float = 1.0
    # the study's recipe (README, docs/methods.md section 5) is the default: Adam on fresh points, then L-BFGS on
    # 4096 fixed uniform points for 70 % of a time budget.  lbfgs_steps None: 1,000,000 with `seconds`, else
    # max(1, steps // 10); 0 turns the stage off
    lbfgs_steps: int | None = None               # L-BFGS stage after the Adam steps (inr.train.TrainConfig)
    lbfgs_fraction: float = 0.7
    lbfgs_lr: float = 1.0
    lbfgs_history: int = 50
    lbfgs_iter: int = 10
    # L-BFGS on this many uniform points drawn at the switch; None: the family's spec (4096 for most
    # models), 0: the Adam stage's points (fixed, the last RAD draw, or one uniform set with resample)
    lbfgs_points: int | None = None
    clock: str = "wall"                          # what --seconds measures: wall | cpu (inr.train.TrainConfig.clock)
    max_memory_gb: float = 4.0                   # refuse a run whose rough memory estimate exceeds this

    def __post_init__(self):
        if isinstance(self.equation, dict):
            self.equation = EquationSpec(**self.equation)
        self.validate()

    def validate(self) -> None:
        """Check every option's type and range (InputError naming the option); no allocation."""
        def flag(name):
            return "--" + name.replace("_", "-")

        def integer(name, lo, hi, optional=False):
            v = getattr(self, name)
            if v is None and optional:
                return
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                raise InputError(f"{flag(name)} must be an integer in {lo}..{hi:,}, got {v!r}")

        if self.equation is not None and not isinstance(self.equation, EquationSpec):
            raise InputError(f"equation must be a pde.equations.EquationSpec, got {type(self.equation).__name__}")
        if self.equation is None:
            if not isinstance(self.problem, str) or self.problem not in problems.PROBLEMS:
                raise InputError(f"unknown problem {self.problem!r}; choose one of: {', '.join(problems.PROBLEMS)} "
                                 f"(or --equation poisson|helmholtz|heat)")
            integer("n", 1, 1000)
        if self.model not in models.MODELS:
            raise InputError(f"unknown model {self.model!r}; choose one of: {', '.join(models.MODELS)}")
        integer("params", 1, MAX_PARAMS, optional=True)
        for name in ("points", "residual_points"):
            integer(name, 1, MAX_POINTS)
        integer("steps", 1, 10**9, optional=True)
        integer("lbfgs_steps", 0, 10**9, optional=True)
        integer("boundary_points", 1, MAX_POINTS, optional=True)
        integer("lbfgs_points", 0, MAX_POINTS, optional=True)
        integer("rad_every", 1, 10**9)
        integer("rad_pool", 1, 1000)
        integer("seed", 0, 2**63 - 1)
        integer("eval_every", 0, 10**9)
        integer("eval_res", 2, MAX_EVAL_POINTS, optional=True)
        if not isinstance(self.hyper, dict):
            raise InputError(f"hyper must be a dict of model options, got {type(self.hyper).__name__}")
        for name, v in self.hyper.items():
            if name in HYPER_INT:
                lo, hi = HYPER_INT[name]
                if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or not lo <= v <= hi:
                    raise InputError(f"{flag(name)} must be an integer in {lo}..{hi:,}, got {v!r}")
            elif name in HYPER_FLOAT:
                if isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and MIN_FREQUENCY <= v <= MAX_FREQUENCY):
                    raise InputError(f"{flag(name)} must be a finite number in [{MIN_FREQUENCY:g}, {MAX_FREQUENCY:g}], "
                                     f"got {v!r}")
        for name in ("seconds", "lr", "penalty", "lr_final", "max_memory_gb"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float)) or not (math.isfinite(v) and v > 0)):
                raise InputError(f"{flag(name)} must be a finite number > 0, got {v}")
        if self.boundary not in ("exact", "penalty"):
            raise InputError(f"--boundary must be 'exact' or 'penalty', got {self.boundary!r}")
        if not self.penalty > 0:
            raise InputError(f"--penalty must be > 0, got {self.penalty}")
        if self.dtype not in DTYPES:
            raise InputError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.checkpoint_every < 0:
            raise InputError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.laplacian not in LAPLACIAN_MODES:
            raise InputError(f"--laplacian must be one of {', '.join(LAPLACIAN_MODES)}, got {self.laplacian!r}")
        if self.eval_res is not None and self.eval_res < 2:
            raise InputError(f"--eval-res must be >= 2, got {self.eval_res}")
        if self.sampling not in ("uniform", "rad"):
            raise InputError(f"--sampling must be 'uniform' or 'rad', got {self.sampling!r}")
        if self.sampling == "rad" and self.resample:
            raise InputError("--resample draws uniform points every step; it cannot be combined with --sampling rad")
        if self.clock not in ("wall", "cpu"):
            raise InputError(f"--clock must be 'wall' or 'cpu', got {self.clock!r}")
        if not (math.isfinite(self.rad_k) and self.rad_k >= 0 and math.isfinite(self.rad_c) and self.rad_c >= 0):
            raise InputError(f"--rad-k and --rad-c must be finite numbers >= 0, got {self.rad_k}, {self.rad_c}")
        try:
            TrainConfig(**self.train_options())   # checks the lbfgs_* values
        except ValueError as e:
            raise InputError(str(e)) from None

    def build_problem(self) -> problems.Problem:
        """The problem this config names: ``equation`` built, else the registered ``problem`` at ``n``."""
        if self.equation is not None:
            return self.equation.build()
        try:
            return problems.get(self.problem, self.n)
        except ValueError as e:
            raise InputError(str(e)) from None

    @property
    def problem_name(self) -> str:
        return (self.equation.name or self.equation.equation) if self.equation is not None else self.problem

    @property
    def adam_steps(self) -> int:
        """``steps``, or its default: 1,000,000 with a time budget (the budget ends the stage), else 2000."""
        return self.steps if self.steps is not None else (1_000_000 if self.seconds else 2000)

    @property
    def fresh_points(self) -> bool:
        """``resample``, or its default: fresh uniform points every Adam step unless RAD samples them."""
        return self.resample if self.resample is not None else self.sampling == "uniform"

    @property
    def lbfgs_draw(self) -> int:
        """``lbfgs_points``, or its default (the family's spec, ``task("pde").lbfgs_points``); 0: the Adam points."""
        return self.lbfgs_points if self.lbfgs_points is not None else models.registry.spec(self.model).task("pde").lbfgs_points

    @property
    def lbfgs_outer(self) -> int:
        """``lbfgs_steps``, or its default: 1,000,000 with a time budget, else max(1, adam_steps // 10)."""
        if self.lbfgs_steps is not None:
            return self.lbfgs_steps
        return 1_000_000 if self.seconds else max(1, self.adam_steps // 10)

    def train_options(self) -> dict:
        return {"lbfgs_steps": self.lbfgs_outer,
                **{k: getattr(self, k) for k in ("lbfgs_fraction", "lbfgs_lr", "lbfgs_history", "lbfgs_iter")}}


def rad_probabilities(r: torch.Tensor, k: float = 1.0, c: float = 1.0) -> torch.Tensor:
    """RAD sampling probabilities (Wu et al. 2023): ``p_i ∝ |r_i|^k / mean_j |r_j|^k + c`` over a candidate
    pool with residuals ``r``; float64, summing to 1.  All-zero residuals (or k = 0) give uniform p."""
    e = r.detach().double().abs().reshape(-1).cpu() ** k
    m = e.mean()
    w = (e / m if m > 0 else torch.zeros_like(e)) + c
    if not bool(torch.isfinite(w).all()) or not float(w.sum()) > 0:
        w = torch.ones_like(e)
    return w / w.sum()


def rad_draw(pool: torch.Tensor, r: torch.Tensor, n: int, generator: torch.Generator, k: float = 1.0,
             c: float = 1.0) -> torch.Tensor:
    """``n`` of the candidate points ``pool`` drawn without replacement with :func:`rad_probabilities`
    (from ``generator``, a CPU generator, so a seeded run is reproducible)."""
    if n > pool.shape[0]:
        raise InputError(f"cannot draw {n} points from a pool of {pool.shape[0]}")
    idx = torch.multinomial(rad_probabilities(r, k, c), n, replacement=False, generator=generator)
    return pool[idx.to(pool.device)]


def eval_grid(problem: problems.Problem, res: int | None, dtype=torch.float32) -> torch.Tensor:
    """A uniform grid over the problem's box (space x time), boundary included, ``res`` points per axis
    (default :data:`DEFAULT_EVAL_RES` by the number of inputs)."""
    d = problem.n_inputs
    res = res or DEFAULT_EVAL_RES.get(d, 32)
    axes = [torch.linspace(lo, hi, res, dtype=torch.float64) for lo, hi in problem.box]
    if problem.bounds is None:
        axes = [torch.linspace(0.0, 1.0, res, dtype=torch.float64)] * d
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, d)
    return pts.to(dtype)


def _batched(fn, x: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


@dataclass
class Solution:
    """What :func:`solve` returns: the trained model, the evaluation and the training record.

    ``model`` (the :class:`pde.operators.Ansatz`: boundary values built in, reads the problem's own
    coordinates), ``metrics`` (dict, what metrics.json holds), ``history`` (list of rows, one per logged
    step), :meth:`predict` and :meth:`save`.  ``grid``/``prediction``/``truth``: the evaluation points and
    values (``truth`` is the exact solution or the finite-difference reference, ``grid_shape`` its shape)."""
    ansatz: Ansatz
    problem: problems.Problem
    config: SolveConfig
    model_config: dict
    metrics: dict
    fit: FitResult
    grid: torch.Tensor
    prediction: np.ndarray
    truth: np.ndarray
    grid_shape: tuple = ()

    @property
    def model(self) -> Ansatz:
        return self.ansatz

    @property
    def history(self) -> list:
        return self.fit.history

    def predict(self, points) -> np.ndarray:
        """u at ``points`` (array (N, inputs) or (inputs,), in the problem's own coordinates: space axes, then
        t) -> numpy (N,) float64.  Evaluated in chunks, without gradients, on the model's device and dtype."""
        x = np.asarray(points, dtype=np.float64)
        if x.ndim == 1 and self.problem.n_inputs == 1:
            x = x[:, None]
        elif x.ndim == 1:
            x = x[None, :]
        if x.ndim != 2 or x.shape[1] != self.problem.n_inputs:
            raise InputError(f"points must have shape (N, {self.problem.n_inputs}), got {np.shape(points)}")
        p = next(self.ansatz.parameters())
        xt = torch.as_tensor(x, dtype=p.dtype, device=p.device)
        if xt.shape[0] == 0:
            return np.zeros(0)
        with torch.no_grad():
            return _batched(self.ansatz, xt).double().cpu().numpy().reshape(-1)

    def save(self, out) -> str:
        """Write the run folder ``out`` (it must not exist; :class:`inr.runs.RunFolder`): config.json,
        model.pt, history.csv, solution.png, metrics.json.  Returns ``out``."""
        return write_run(self, str(out))


def build_ansatz(cfg: SolveConfig, problem: problems.Problem, device, dtype) -> tuple[Ansatz, dict]:
    hyper = {**models.pde_defaults(cfg.model, problem.frequency, problem.dim),
             **cfg.hyper}
    try:
        net = models.build(cfg.model, problem.n_inputs, 1, params=cfg.params, device=device, dtype=dtype, **hyper)
    except InputError:
        raise
    except ValueError as e:   # the registry's refusal of an option or budget
        raise InputError(str(e)) from None
    return Ansatz(net, problem, cfg.boundary).to(device), dict(net.config)


def estimate_memory(cfg: SolveConfig, problem: problems.Problem, eval_points: int) -> dict:
    """A rough upper estimate of the bytes a run needs, from the config alone (the model is built on the
    meta device, which allocates nothing): activations of the largest training batch (points x the
    features every layer outputs per point x (value + gradient directions + Laplacian) x 3 for what autograd
    keeps), the parameters with Adam's moments, gradients and the L-BFGS history, the RAD candidate pool,
    and the evaluation grid."""
    bytes_per = 8 if cfg.dtype == "float64" else 4
    hyper = {**models.pde_defaults(cfg.model, problem.frequency, problem.dim), **cfg.hyper}
    per_point, n_params = None, None
    if cfg.model != "kan":
        try:
            with torch.device("meta"):
                net = models.build(cfg.model, problem.n_inputs, 1, params=cfg.params, **hyper)
                n_params = models.count_params(net)
                sizes = []
                hooks = [m.register_forward_hook(lambda m, i, o: sizes.append(o.numel() if torch.is_tensor(o) else 0))
                         for m in net.modules() if not list(m.children())]
                net(torch.zeros(1, problem.n_inputs))
                for h in hooks:
                    h.remove()
                per_point = sum(sizes)
        except ValueError as e:
            raise InputError(str(e)) from None
        except Exception:   # a layer the meta device cannot run: fall back to the parameter count
            per_point = None
    if n_params is None:
        n_params = cfg.params or 10_000
    if per_point is None:
        per_point = 8 * int(math.sqrt(n_params)) * 4
    train_points = max(cfg.points, cfg.lbfgs_draw if cfg.lbfgs_outer else 0, cfg.boundary_points or 0)
    directions = problem.dim + 2
    activations = train_points * per_point * directions * bytes_per * 3
    parameters = n_params * bytes_per * (4 + 2 * cfg.lbfgs_history + 2)
    pool = (cfg.rad_pool * cfg.points * (problem.n_inputs + 1) * 8 if cfg.sampling == "rad" else 0) \
        + min(cfg.rad_pool * cfg.points, 4096) * per_point * directions * bytes_per
    evaluation = eval_points * (problem.n_inputs * 2 + 4) * 8 + min(eval_points, 16384) * per_point * bytes_per
    total = activations + parameters + pool + evaluation
    return {"bytes": int(total), "activations": int(activations), "parameters": int(parameters),
            "rad_pool": int(pool), "evaluation": int(evaluation), "params": int(n_params),
            "features_per_point": int(per_point)}


def check_memory(cfg: SolveConfig, problem: problems.Problem, eval_points: int) -> dict:
    """:func:`estimate_memory`, refused with an InputError above ``cfg.max_memory_gb``."""
    if eval_points > MAX_EVAL_POINTS:
        raise InputError(f"--eval-res {cfg.eval_res}: the evaluation grid would have {eval_points:,} points "
                         f"(limit {MAX_EVAL_POINTS:,})")
    est = estimate_memory(cfg, problem, eval_points)
    if est["bytes"] > cfg.max_memory_gb * 2**30:
        big = max(("activations", "parameters", "rad_pool", "evaluation"), key=lambda k: est[k])
        hint = {"activations": "--points/--lbfgs-points/--boundary-points or the model's width",
                "parameters": "--params/--hidden/--rank or --lbfgs-history", "rad_pool": "--rad-pool or --points",
                "evaluation": "--eval-res"}[big]
        raise InputError(f"this run needs about {est['bytes'] / 2**30:.1f} GB (mostly {big}: "
                         f"{est[big] / 2**30:.1f} GB), above --max-memory-gb {cfg.max_memory_gb:g}; reduce {hint}, "
                         f"or raise --max-memory-gb")
    return est


def evaluate_errors(ansatz: Ansatz, problem: problems.Problem, grid: torch.Tensor,
                    truth: np.ndarray | None = None) -> tuple[dict, np.ndarray, np.ndarray]:
    """Relative L2 and max error of ``ansatz`` on ``grid`` against ``truth`` (default: the exact solution)."""
    with torch.no_grad():
        pred = _batched(ansatz, grid).double().cpu().numpy().ravel()
        if truth is None:
            truth = problem.exact(grid.double().cpu()).numpy().ravel()
    err = pred - truth
    norm = np.linalg.norm(truth)
    return ({"rel_l2": float(np.linalg.norm(err) / norm) if norm > 0 else float(np.linalg.norm(err)),
             "max_error": float(np.abs(err).max())}, pred, truth)


def check_problem(problem: problems.Problem) -> None:
    """Evaluate the problem's source and boundary data at a few points before training, so a problem that
    cannot be evaluated (a missing method, a wrong shape, non-finite values) is refused before any work."""
    if hasattr(problem, "check"):
        return problem.check()
    g = torch.Generator().manual_seed(1)
    pieces = (("source", problem.source, problem.sample_interior(16, g, dtype=torch.float64)),
              ("boundary values", problem.boundary_data, problem.sample_boundary(16, g, dtype=torch.float64)))
    for name, fn, pts in pieces:
        try:
            with torch.no_grad():
                v = fn(pts)
        except NotImplementedError:
            raise InputError(f"problem {problem.name!r}: no {name} (implement {'source' if name == 'source' else 'boundary_values or exact'})") from None
        if not torch.is_tensor(v) or tuple(v.shape) != (16, 1) or not bool(torch.isfinite(v).all()):
            raise InputError(f"problem {problem.name!r}: its {name} must be finite with shape (N, 1), got "
                             f"{tuple(getattr(v, 'shape', ()))}")


def fingerprint(cfg: SolveConfig, model_config: dict) -> str:
    """What a checkpoint must match to be resumed: the problem, the model and everything that shapes
    the training data (budgets, schedule and output options may differ)."""
    import json

    keep = ("problem", "n", "model", "params", "hyper", "boundary", "penalty", "points", "boundary_points",
            "resample", "seed", "dtype", "sampling", "rad_every", "rad_pool", "rad_k", "rad_c", "lbfgs_points")
    solve_part = {k: getattr(cfg, k) for k in keep}
    solve_part["resample"] = cfg.fresh_points
    solve_part["lbfgs_points"] = cfg.lbfgs_draw
    if cfg.equation is not None:
        solve_part["equation"] = cfg.equation.to_dict()
    return json.dumps({"solve": solve_part, "model": model_config}, sort_keys=True, default=str)


def _as_config(spec, config: SolveConfig | None, options: dict) -> tuple[SolveConfig, problems.Problem | None]:
    """``solve``'s first argument -> (config, a Problem object given directly or None)."""
    from dataclasses import replace

    if isinstance(spec, SolveConfig):
        if config is not None:
            raise InputError("give the config once: solve(config) or solve(problem, config)")
        return (replace(spec, **options) if options else spec), None
    base = config if config is not None else SolveConfig()
    if spec is None:
        return (replace(base, **options) if options else base), None
    if isinstance(spec, problems.Problem):
        return (replace(base, **options) if options else base), spec
    if isinstance(spec, EquationSpec):
        return replace(base, equation=spec, **options), None
    if isinstance(spec, str):
        return replace(base, problem=spec, equation=None, **options), None
    raise InputError(f"solve() takes a SolveConfig, a Problem, an EquationSpec or a problem name, got "
                     f"{type(spec).__name__}")


def solve(config_or_problem=None, config: SolveConfig | None = None, *, checkpoint_path: str | None = None,
          resume: bool = False, **options) -> Solution:
    """Train a PINN and measure it; see the module docstring for the loss.  Returns a :class:`Solution`.

    ``config_or_problem``: a :class:`SolveConfig`; or a problem (a :class:`pde.problems.Problem` object, an
    :class:`pde.equations.EquationSpec`, or a registered name) with an optional ``config`` for the rest;
    ``**options`` override config fields (``solve(spec, seconds=60, model="siren")``).
    ``checkpoint_path``: with ``cfg.checkpoint_every`` the training state (weights, optimizer, generators
    including the collocation sampler's) is saved there every N steps; ``resume`` continues from it, giving
    the same final weights as an uninterrupted run.

    Everything that can fail on bad input (options, expressions, the problem's own functions, the memory
    estimate, the finite-difference reference) is checked before training, so a trained model is never lost
    to a late error."""
    cfg, problem = _as_config(config_or_problem, config, options)
    cfg.validate()
    problem = problem if problem is not None else cfg.build_problem()
    check_problem(problem)
    if cfg.boundary == "exact" and problem.n_inputs > 3 + (1 if problem.time_dependent else 0):
        raise InputError("exact boundary conditions support 1-3 space dimensions")
    reference_info, grid_shape = None, ()
    if problem.has_exact:
        res = cfg.eval_res or DEFAULT_EVAL_RES.get(problem.n_inputs, 32)
        n_eval = res ** problem.n_inputs
        grid_shape = (res,) * problem.n_inputs
    else:
        n_eval = 0
    memory = check_memory(cfg, problem, n_eval)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
    if problem.has_exact:
        grid, ref_values = eval_grid(problem, cfg.eval_res, dtype).to(device), None
    else:   # a finite-difference reference on the problem's box (before training: it can refuse the problem)
        from .reference import reference

        longest = max(b - a for a, b in problem.box[:problem.dim])
        ref = reference(problem, h=longest / cfg.eval_res if cfg.eval_res else None)
        grid = torch.as_tensor(ref["points"], dtype=dtype, device=device)
        ref_values, reference_info, grid_shape = ref["values"], ref["info"], tuple(ref["shape"])
    seed_everything(cfg.seed)
    ansatz, model_config = build_ansatz(cfg, problem, device, dtype)
    lap_mode = choose_laplacian(ansatz, cfg.laplacian)   # raises early for "forward" on a model without rules
    gen = torch.Generator().manual_seed(cfg.seed)
    n_bnd = cfg.boundary_points or max(4, cfg.points // 4)
    state: dict = {}

    def sample():
        state["x"] = problem.sample_interior(cfg.points, gen, device, dtype)
        if cfg.boundary == "penalty":
            xb = problem.sample_boundary(n_bnd, gen, device, dtype)
            state["xb"], state["gb"] = xb, problem.boundary_data(xb).detach()

    def rad_sample(step: int):
        """Residual-based adaptive sampling: a uniform pool, its residual (no graph), a draw by rad_draw."""
        pool = problem.sample_interior(cfg.rad_pool * cfg.points, gen, device, dtype)
        r = _batched(lambda x: residual(ansatz, problem, x, create_graph=False, laplacian=lap_mode).detach(), pool, 4096)
        state["x"] = rad_draw(pool, r, cfg.points, gen, cfg.rad_k, cfg.rad_c)
        state["drawn_at"] = step

    def points_loss(x, xb=None, gb=None):
        r = residual(ansatz, problem, x, laplacian=lap_mode)
        res_loss = r.square().mean()
        info = {"residual": res_loss.detach().sqrt()}
        loss = res_loss
        if cfg.boundary == "penalty":
            b = (ansatz(xb) - gb).square().mean()
            loss = loss + cfg.penalty * b
            info["boundary"] = b.detach().sqrt()
        return loss, info

    def loss_fn(step: int):
        if cfg.fresh_points or "x" not in state:
            sample()
        elif cfg.sampling == "rad" and step > 0 and step % cfg.rad_every == 0 and state.get("drawn_at") != step:
            rad_sample(step)
        return points_loss(state["x"], state.get("xb"), state.get("gb"))

    def lbfgs_loss(step: int):
        """The L-BFGS stage's fixed points: with lbfgs_points, that many uniform points drawn at the switch;
        else the current set (fixed or the last RAD draw), or with --resample one uniform set drawn there."""
        if "lbfgs_x" not in state:
            if cfg.lbfgs_draw:
                state["x"] = problem.sample_interior(cfg.lbfgs_draw, gen, device, dtype)
            elif cfg.fresh_points:
                sample()
            state["lbfgs_x"] = state["x"]
            state["lbfgs_xb"], state["lbfgs_gb"] = state.get("xb"), state.get("gb")
        return points_loss(state["lbfgs_x"], state.get("lbfgs_xb"), state.get("lbfgs_gb"))

    keep = ("x", "xb", "gb", "drawn_at", "lbfgs_x", "lbfgs_xb", "lbfgs_gb")

    def get_extra() -> dict:
        return {"sampler": gen.get_state(), "points": {k: state[k] for k in keep if state.get(k) is not None}}

    def set_extra(d: dict) -> None:
        gen.set_state(d["sampler"])
        if "points" in d:   # checkpoints load onto the CPU
            state.clear()
            state.update({k: v.to(device) if torch.is_tensor(v) else v for k, v in d["points"].items()})

    if not cfg.fresh_points:
        sample()   # the fixed points, drawn before training so a resumed run draws the same ones

    def evaluate(step: int) -> dict:
        return evaluate_errors(ansatz, problem, grid, ref_values)[0]

    lr = cfg.lr if cfg.lr is not None else models.registry.spec(cfg.model).task("pde").lr
    tcfg = TrainConfig(steps=cfg.adam_steps, seconds=cfg.seconds, lr=lr, lr_final=cfg.lr_final, schedule=cfg.schedule,
                       seed=cfg.seed, device=str(device), targets=(1e-2, 1e-3), target_key="rel_l2",
                       target_mode="min", quiet=cfg.quiet, desc=f"{cfg.model} {problem.name}" + (
                           f" n={cfg.n}" if cfg.equation is None else ""),
                       log_every=max(1, min(50, cfg.adam_steps // 200)), checkpoint_every=cfg.checkpoint_every,
                       checkpoint_path=checkpoint_path, resume=resume,
                       fingerprint=fingerprint(cfg, model_config), clock=cfg.clock, **cfg.train_options())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fit(ansatz, loss_fn, tcfg, evaluate=evaluate if cfg.eval_every else None, eval_every=cfg.eval_every,
                 extra_state=(get_extra, set_extra), lbfgs_loss=lbfgs_loss)
    cpu_seconds, wall_seconds = time.process_time() - cpu0, time.perf_counter() - wall0
    switch = next((row["step"] for row in result.history if row.get("stage") == "lbfgs"), None)

    errors, pred, truth = evaluate_errors(ansatz, problem, grid, ref_values)
    held = problem.sample_interior(cfg.residual_points, torch.Generator().manual_seed(cfg.seed + 1), device, dtype)
    final_res = _batched(lambda x: residual(ansatz, problem, x, create_graph=False, laplacian=lap_mode).detach(), held, 4096)
    held_b = problem.sample_boundary(min(cfg.residual_points, 4096), torch.Generator().manual_seed(cfg.seed + 2), device, dtype)
    with torch.no_grad():
        b_err = (_batched(ansatz, held_b).double() - problem.boundary_data(held_b.double()).double()).abs()
    if reference_info is not None:
        reference_info = {**reference_info, "below_reported_error": reference_info["estimated_rel_error"] < errors["rel_l2"]}
    metrics = {
        "problem": problem.describe(), "model": cfg.model, "params": models.count_params(ansatz),
        **errors, "error_against": "exact solution" if reference_info is None else "finite-difference reference",
        "reference": reference_info,
        "final_residual_rms": float(final_res.double().square().mean().sqrt()),
        "boundary_error_rms": float(b_err.square().mean().sqrt()), "boundary_error_max": float(b_err.max()),
        "final_loss": result.final_loss, "seconds": round(result.seconds, 3), "steps": result.steps,
        "cpu_seconds": round(cpu_seconds, 3), "wall_seconds": round(wall_seconds, 3), "clock": cfg.clock,   # process CPU time of the training (all threads; shows load)
        "seconds_per_step": result.seconds_per_step, "stopped_by": result.stopped_by,
        "time_to_rel_l2": result.time_to_target, "divergence_events": result.events, "lr": lr,
        "lbfgs": (None if not cfg.lbfgs_outer else
                  {"switch_after_step": None if switch is None else switch - 1,
                   "steps": sum(row.get("stage") == "lbfgs" for row in result.history if "loss" in row),
                   "points": (f"{cfg.lbfgs_draw} uniform points drawn at the switch" if cfg.lbfgs_draw else
                              "one uniform set drawn at the switch (--resample)" if cfg.fresh_points else
                              "the last RAD draw, fixed" if cfg.sampling == "rad" else
                              "the fixed collocation points")}),
        "memory_estimate_bytes": memory["bytes"],
        "seed": cfg.seed, "device": str(device), "dtype": cfg.dtype, "laplacian": lap_mode, "config": config_dict(cfg),
        "model_config": model_config, "versions": {**versions(), "threads": torch.get_num_threads()},
    }
    return Solution(ansatz, problem, cfg, model_config, metrics, result, grid.cpu(), pred, truth, grid_shape)


def config_dict(cfg: SolveConfig) -> dict:
    """``asdict(cfg)`` with the equation as JSON (callables by name)."""
    d = asdict(cfg)
    d["equation"] = cfg.equation.to_dict() if cfg.equation is not None else None
    return d


def write_run(sol: Solution, out: str) -> str:
    """Create the run folder ``out`` (which must not exist; :class:`inr.runs.RunFolder`: built under a
    hidden name and renamed at the end) holding :func:`write_files`."""
    from inr.runs import RunFolder

    with RunFolder(out) as run:
        write_files(sol, str(run.path))
    return out


def write_files(sol: Solution, out: str) -> None:
    """config.json, model.pt, history.csv, solution.png, metrics.json (written last, so its presence
    means the folder is complete) into the folder ``out``.  Every file goes to a temporary name first."""
    os.makedirs(out, exist_ok=True)
    write_json({"solve": config_dict(sol.config), "model": sol.model_config}, os.path.join(out, "config.json"))
    tmp = os.path.join(out, "model.pt.tmp")
    torch.save(sol.ansatz.net.state_dict(), tmp)
    os.replace(tmp, os.path.join(out, "model.pt"))
    sol.fit.write_history(os.path.join(out, "history.csv"))
    try:   # a figure is not worth losing the trained model over
        plot_solution(sol, os.path.join(out, "solution.png"))
    except Exception as e:  # noqa: BLE001
        sol.metrics["plot_error"] = f"{type(e).__name__}: {e}"
        print(f"warning: solution.png not written ({type(e).__name__}: {e})", file=sys.stderr)
    write_json(sol.metrics, os.path.join(out, "metrics.json"))


def plot_solution(sol: Solution, path: str) -> None:
    """Prediction, exact solution (or reference) and error: images for two inputs (for three, the slice at
    the last grid value of the last axis: the final time of a 2-D heat problem), curves for one."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pred, truth = sol.prediction, sol.truth
    title = f"{sol.config.model} on {sol.problem.name}"
    label = "exact" if sol.metrics.get("reference") is None else "FD reference"
    d = sol.problem.n_inputs
    shape = tuple(sol.grid_shape) or ((int(round(pred.size ** (1 / d))),) * d)
    box = sol.problem.box
    if d in (2, 3):
        P, T = pred.reshape(shape), truth.reshape(shape)
        if d == 3:
            P, T = P[..., -1], T[..., -1]
        fig = Figure(figsize=(13, 4))
        FigureCanvasAgg(fig)
        axs = fig.subplots(1, 3)
        for ax, img, name in zip(axs, (P, T, P - T), ("prediction", label, "error")):
            im = ax.imshow(img.T, origin="lower", extent=(*box[0], *box[1]), aspect="auto",
                           cmap="RdBu_r" if name == "error" else "viridis")
            ax.set_title(name if d == 2 else f"{name} ({'t' if sol.problem.time_dependent else 'z'} = {box[2][1]:g})")
            fig.colorbar(im, ax=ax, shrink=0.8)
    elif d == 1:
        x = sol.grid.double().numpy().ravel()
        fig = Figure(figsize=(9, 6))
        FigureCanvasAgg(fig)
        axs = fig.subplots(2, 1, sharex=True)
        axs[0].plot(x, truth, "k-", lw=1, label=label)
        axs[0].plot(x, pred, "r--", lw=1, label="prediction")
        axs[0].legend()
        axs[1].plot(x, pred - truth, lw=1)
        axs[1].set_ylabel("error")
        axs[1].set_xlabel("x")
    else:   # 4 inputs (3-D heat): the error along the grid index
        fig = Figure(figsize=(9, 4))
        FigureCanvasAgg(fig)
        ax = fig.subplots(1, 1)
        ax.plot(pred - truth, lw=0.5)
        ax.set_ylabel("error")
        ax.set_xlabel("grid point")
    fig.suptitle(f"{title}: relative L2 {sol.metrics['rel_l2']:.2e}")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
