"""The PINN solve: a problem, a model, the residual loss, :func:`inr.train.fit`, and the run folder.

Loss = mean of the squared scaled residual over interior collocation points, plus (boundary
"penalty") ``penalty * mean((u - g)^2)`` over boundary points.  Collocation points are uniform,
drawn once or (``resample``) afresh every step from a generator seeded by ``seed``; or (``sampling="rad"``)
redrawn every ``rad_every`` steps by residual-based adaptive sampling (:func:`rad_draw`).  An optional
L-BFGS stage (``lbfgs_steps``) follows the Adam steps on one fixed set of points.  Errors are measured on
a dense uniform grid (boundary included), which random training points never hit.
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field

import numpy as np
import torch

from inr.runfiles import versions, write_json
from inr.train import FitResult, TrainConfig, fit, resolve_device, seed_everything

from . import models, problems
from .operators import LAPLACIAN_MODES, Ansatz, choose_laplacian, residual

DTYPES = {"float32": torch.float32, "float64": torch.float64}

# Adam learning rates.  lrnn-siren and siren: short sweeps on poisson2d n = 4 (see models.pde_defaults;
# SIREN at 1e-3 diverged, LRNN improved from 2e-3 to 1e-2).  The others are common defaults, not tuned.
DEFAULT_LR = {"lrnn-siren": 1e-2, "lrnn-spder": 1e-2, "siren": 2e-4, "spder": 2e-4, "mlp-tanh": 2e-3,
              "kan": 1e-2, "gauss": 1e-3, "relu-pe": 1e-3}


@dataclass
class SolveConfig:
    problem: str = "poisson2d"
    n: int = 1
    model: str = "lrnn-siren"
    params: int | None = 16000
    hyper: dict = field(default_factory=dict)    # model options; missing ones come from models.pde_defaults
    boundary: str = "exact"                      # exact | penalty
    penalty: float = 100.0                       # boundary weight (penalty mode)
    points: int = 1024                           # interior collocation points
    boundary_points: int | None = None           # penalty mode; default points // 4
    resample: bool | None = None                 # fresh uniform points every Adam step; None: yes (uniform sampling)
    steps: int | None = None                     # Adam steps; None: 1,000,000 with `seconds` (the budget decides), else 2000
    seconds: float | None = None
    lr: float | None = None                      # default: DEFAULT_LR[model]
    lr_final: float = 0.1
    schedule: str = "cosine"
    seed: int = 0
    device: str = "auto"
    dtype: str = "float32"
    eval_res: int | None = None                  # grid points per axis; default 256 (2-D), 8193 (1-D)
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
    lbfgs_points: int | None = 4096              # L-BFGS on this many uniform points drawn at the switch (None: the Adam points)
    clock: str = "wall"                          # what --seconds measures: wall | cpu (inr.train.TrainConfig.clock)

    def validate(self) -> None:
        problems.get(self.problem, self.n)  # raises on an unknown problem or bad n
        if self.model not in models.MODELS:
            raise ValueError(f"unknown model {self.model!r}; choose one of: {', '.join(models.MODELS)}")
        for name in ("points", "steps", "residual_points"):
            if getattr(self, name) is not None and getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be > 0, got {getattr(self, name)}")
        if self.boundary_points is not None and self.boundary_points <= 0:
            raise ValueError(f"--boundary-points must be > 0, got {self.boundary_points}")
        for name in ("seconds", "lr", "penalty", "lr_final"):
            v = getattr(self, name)
            if v is not None and not (math.isfinite(v) and v > 0):
                raise ValueError(f"--{name.replace('_', '-')} must be a finite number > 0, got {v}")
        if self.boundary not in ("exact", "penalty"):
            raise ValueError(f"--boundary must be 'exact' or 'penalty', got {self.boundary!r}")
        if not self.penalty > 0:
            raise ValueError(f"--penalty must be > 0, got {self.penalty}")
        if self.dtype not in DTYPES:
            raise ValueError(f"--dtype must be one of {', '.join(DTYPES)}, got {self.dtype!r}")
        if self.checkpoint_every < 0:
            raise ValueError(f"--checkpoint-every must be >= 0, got {self.checkpoint_every}")
        if self.laplacian not in LAPLACIAN_MODES:
            raise ValueError(f"--laplacian must be one of {', '.join(LAPLACIAN_MODES)}, got {self.laplacian!r}")
        if self.eval_res is not None and self.eval_res < 2:
            raise ValueError(f"--eval-res must be >= 2, got {self.eval_res}")
        if self.sampling not in ("uniform", "rad"):
            raise ValueError(f"--sampling must be 'uniform' or 'rad', got {self.sampling!r}")
        if self.sampling == "rad" and self.resample:
            raise ValueError("--resample draws uniform points every step; it cannot be combined with --sampling rad")
        if self.clock not in ("wall", "cpu"):
            raise ValueError(f"--clock must be 'wall' or 'cpu', got {self.clock!r}")
        if self.lbfgs_points is not None and self.lbfgs_points < 1:
            raise ValueError(f"--lbfgs-points must be >= 1, got {self.lbfgs_points}")
        if self.rad_every < 1 or self.rad_pool < 1:
            raise ValueError(f"--rad-every and --rad-pool must be >= 1, got {self.rad_every}, {self.rad_pool}")
        if not (math.isfinite(self.rad_k) and self.rad_k >= 0 and math.isfinite(self.rad_c) and self.rad_c >= 0):
            raise ValueError(f"--rad-k and --rad-c must be finite numbers >= 0, got {self.rad_k}, {self.rad_c}")
        TrainConfig(**self.train_options())   # checks the lbfgs_* values

    @property
    def adam_steps(self) -> int:
        """``steps``, or its default: 1,000,000 with a time budget (the budget ends the stage), else 2000."""
        return self.steps if self.steps is not None else (1_000_000 if self.seconds else 2000)

    @property
    def fresh_points(self) -> bool:
        """``resample``, or its default: fresh uniform points every Adam step unless RAD samples them."""
        return self.resample if self.resample is not None else self.sampling == "uniform"

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
        raise ValueError(f"cannot draw {n} points from a pool of {pool.shape[0]}")
    idx = torch.multinomial(rad_probabilities(r, k, c), n, replacement=False, generator=generator)
    return pool[idx.to(pool.device)]


def eval_grid(problem: problems.Problem, res: int | None, dtype=torch.float32) -> torch.Tensor:
    """A uniform grid over [0, 1]^dim, boundary included, ``res`` points per axis."""
    res = res or (256 if problem.dim == 2 else 8193)
    axes = [torch.linspace(0.0, 1.0, res, dtype=torch.float64)] * problem.dim
    pts = torch.stack(torch.meshgrid(*axes, indexing="ij"), -1).reshape(-1, problem.dim)
    return pts.to(dtype)


def _batched(fn, x: torch.Tensor, chunk: int = 16384) -> torch.Tensor:
    return torch.cat([fn(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])


@dataclass
class Solution:
    """What :func:`solve` returns: the trained ansatz, the evaluation and the training record."""
    ansatz: Ansatz
    problem: problems.Problem
    config: SolveConfig
    model_config: dict
    metrics: dict
    fit: FitResult
    grid: torch.Tensor
    prediction: np.ndarray
    truth: np.ndarray


def build_ansatz(cfg: SolveConfig, problem: problems.Problem, device, dtype) -> tuple[Ansatz, dict]:
    hyper = {**models.pde_defaults(cfg.model, problem.frequency, problem.dim),
             **cfg.hyper}
    net = models.build(cfg.model, problem.dim, 1, params=cfg.params, device=device, dtype=dtype, **hyper)
    return Ansatz(net, problem, cfg.boundary).to(device), dict(net.config)


def evaluate_errors(ansatz: Ansatz, problem: problems.Problem, grid: torch.Tensor) -> tuple[dict, np.ndarray, np.ndarray]:
    with torch.no_grad():
        pred = _batched(ansatz, grid).double().cpu().numpy().ravel()
        truth = problem.exact(grid.double().cpu()).numpy().ravel()
    err = pred - truth
    return ({"rel_l2": float(np.linalg.norm(err) / np.linalg.norm(truth)), "max_error": float(np.abs(err).max())},
            pred, truth)


def fingerprint(cfg: SolveConfig, model_config: dict) -> str:
    """What a checkpoint must match to be resumed: the problem, the model and everything that shapes
    the training data (budgets, schedule and output options may differ)."""
    import json

    keep = ("problem", "n", "model", "params", "hyper", "boundary", "penalty", "points", "boundary_points",
            "resample", "seed", "dtype", "sampling", "rad_every", "rad_pool", "rad_k", "rad_c", "lbfgs_points")
    return json.dumps({"solve": {k: getattr(cfg, k) for k in keep}, "model": model_config}, sort_keys=True,
                      default=str)


def solve(cfg: SolveConfig, checkpoint_path: str | None = None, resume: bool = False) -> Solution:
    """Train a PINN for ``cfg`` and measure it; see the module docstring for the loss.

    ``checkpoint_path``: with ``cfg.checkpoint_every`` the training state (weights, optimizer, generators
    including the collocation sampler's) is saved there every N steps; ``resume`` continues from it, giving
    the same final weights as an uninterrupted run."""
    cfg.validate()
    problem = problems.get(cfg.problem, cfg.n)
    device, dtype = resolve_device(cfg.device), DTYPES[cfg.dtype]
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
            state["xb"], state["gb"] = xb, problem.boundary_values(xb).detach()

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
            if cfg.lbfgs_points:
                state["x"] = problem.sample_interior(cfg.lbfgs_points, gen, device, dtype)
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
    grid = eval_grid(problem, cfg.eval_res, dtype).to(device)

    def evaluate(step: int) -> dict:
        return evaluate_errors(ansatz, problem, grid)[0]

    lr = cfg.lr if cfg.lr is not None else DEFAULT_LR.get(cfg.model, 1e-3)
    tcfg = TrainConfig(steps=cfg.adam_steps, seconds=cfg.seconds, lr=lr, lr_final=cfg.lr_final, schedule=cfg.schedule,
                       seed=cfg.seed, device=str(device), targets=(1e-2, 1e-3), target_key="rel_l2",
                       target_mode="min", quiet=cfg.quiet, desc=f"{cfg.model} {cfg.problem} n={cfg.n}",
                       log_every=max(1, min(50, cfg.adam_steps // 200)), checkpoint_every=cfg.checkpoint_every,
                       checkpoint_path=checkpoint_path, resume=resume,
                       fingerprint=fingerprint(cfg, model_config), clock=cfg.clock, **cfg.train_options())
    cpu0, wall0 = time.process_time(), time.perf_counter()
    result = fit(ansatz, loss_fn, tcfg, evaluate=evaluate if cfg.eval_every else None, eval_every=cfg.eval_every,
                 extra_state=(get_extra, set_extra), lbfgs_loss=lbfgs_loss)
    cpu_seconds, wall_seconds = time.process_time() - cpu0, time.perf_counter() - wall0
    switch = next((row["step"] for row in result.history if row.get("stage") == "lbfgs"), None)

    errors, pred, truth = evaluate_errors(ansatz, problem, grid)
    held = problem.sample_interior(cfg.residual_points, torch.Generator().manual_seed(cfg.seed + 1), device, dtype)
    final_res = _batched(lambda x: residual(ansatz, problem, x, create_graph=False, laplacian=lap_mode).detach(), held, 4096)
    metrics = {
        "problem": problem.describe(), "model": cfg.model, "params": models.count_params(ansatz),
        **errors, "final_residual_rms": float(final_res.double().square().mean().sqrt()),
        "final_loss": result.final_loss, "seconds": round(result.seconds, 3), "steps": result.steps,
        "cpu_seconds": round(cpu_seconds, 3), "wall_seconds": round(wall_seconds, 3), "clock": cfg.clock,   # process CPU time of the training (all threads; shows load)
        "seconds_per_step": result.seconds_per_step, "stopped_by": result.stopped_by,
        "time_to_rel_l2": result.time_to_target, "divergence_events": result.events, "lr": lr,
        "lbfgs": (None if not cfg.lbfgs_outer else
                  {"switch_after_step": None if switch is None else switch - 1,
                   "steps": sum(row.get("stage") == "lbfgs" for row in result.history if "loss" in row),
                   "points": (f"{cfg.lbfgs_points} uniform points drawn at the switch" if cfg.lbfgs_points else
                              "one uniform set drawn at the switch (--resample)" if cfg.fresh_points else
                              "the last RAD draw, fixed" if cfg.sampling == "rad" else
                              "the fixed collocation points")}),
        "seed": cfg.seed, "device": str(device), "dtype": cfg.dtype, "laplacian": lap_mode, "config": asdict(cfg),
        "model_config": model_config, "versions": {**versions(), "threads": torch.get_num_threads()},
    }
    return Solution(ansatz, problem, cfg, model_config, metrics, result, grid.cpu(), pred, truth)


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
    write_json({"solve": asdict(sol.config), "model": sol.model_config}, os.path.join(out, "config.json"))
    tmp = os.path.join(out, "model.pt.tmp")
    torch.save(sol.ansatz.net.state_dict(), tmp)
    os.replace(tmp, os.path.join(out, "model.pt"))
    sol.fit.write_history(os.path.join(out, "history.csv"))
    plot_solution(sol, os.path.join(out, "solution.png"))
    write_json(sol.metrics, os.path.join(out, "metrics.json"))


def plot_solution(sol: Solution, path: str) -> None:
    """Prediction, exact solution and error (images in 2-D, curves in 1-D)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    pred, truth = sol.prediction, sol.truth
    title = f"{sol.config.model} on {sol.problem.name}"
    if sol.problem.dim == 2:
        res = int(round(math.sqrt(pred.size)))
        fig = Figure(figsize=(13, 4))
        FigureCanvasAgg(fig)
        axs = fig.subplots(1, 3)
        for ax, img, name in zip(axs, (pred, truth, pred - truth), ("prediction", "exact", "error")):
            im = ax.imshow(img.reshape(res, res).T, origin="lower", extent=(0, 1, 0, 1),
                           cmap="RdBu_r" if name == "error" else "viridis")
            ax.set_title(name)
            fig.colorbar(im, ax=ax, shrink=0.8)
    else:
        x = sol.grid.double().numpy().ravel()
        fig = Figure(figsize=(9, 6))
        FigureCanvasAgg(fig)
        axs = fig.subplots(2, 1, sharex=True)
        axs[0].plot(x, truth, "k-", lw=1, label="exact")
        axs[0].plot(x, pred, "r--", lw=1, label="prediction")
        axs[0].legend()
        axs[1].plot(x, pred - truth, lw=1)
        axs[1].set_ylabel("error")
        axs[1].set_xlabel("x")
    fig.suptitle(f"{title}: relative L2 {sol.metrics['rel_l2']:.2e}")
    fig.tight_layout()
    tmp = f"{path}.tmp.png"
    fig.savefig(tmp, dpi=110, format="png")
    os.replace(tmp, path)
