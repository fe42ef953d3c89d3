"""The Runge study: fit f(x) = 1/(1 + 25 x^2) on [-1, 1] with quadratic ReLU networks.

Training points are equispaced on [-1, 1] (end points included); the 100 test points are the
midpoints of 100 equal cells of [-1, 1] (scaled by the first c in 1, 0.999, 0.998, ... that keeps
every one of them off the training grid).  Metric: test RMSE of the final iterate.

Strategies (all full-batch Adam through :func:`inr.train.fit`; ``lbfgs_steps`` adds an L-BFGS stage after the
Adam steps, over all parameters as one group, the shrinkage strategies still shrinking after each outer step):

* ``regular``: QNN, PyTorch's default init for r, g and b, one learning rate;
* ``relinear-sg``: ReLinear init, g and b groups with their own small learning rates;
* ``relinear-sw-l1`` / ``relinear-sw-l2``: ReLinear init, one learning rate, L1 / L2 shrinkage of
  the quadratic terms after each step;
* ``mlp``: a conventional ReLU network of the same widths, default init.
"""
from __future__ import annotations

import math
import os
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from approx import nets, pieces
from approx.relinear import ShrinkQuadratic, relinear_groups
from approx.target import parse_target
from inr.runfiles import versions
from inr.train import DivergenceError, TrainConfig, fit, resolve_device, seed_everything
from inr.errors import InputError

MAX_WIDTH, MAX_LAYERS = nets.MAX_WIDTH, nets.MAX_LAYERS   # --widths: the bounds a saved network is held to
STRATEGIES = ("regular", "relinear-sg", "relinear-sw-l1", "relinear-sw-l2", "mlp")


@dataclass
class RungeConfig:
    target: str = "runge"
    widths: tuple = (1, 10, 10, 10, 10, 1)
    n_train: int = 21
    n_test: int = 100
    strategies: tuple = STRATEGIES
    seeds: int = 5
    seed: int = 0                  # seed of the first run; run k uses seed + k
    steps: int = 3000
    lr: float = 3e-3               # r terms and every non-quadratic parameter (all of them for regular/mlp)
    lr_g: float = 3e-4             # ReLinear-sg: g terms
    lr_b: float = 3e-4             # ReLinear-sg: b terms
    lr_final: float = 0.01         # cosine schedule ends at lr * lr_final
    alpha: float = 1e-5            # ReLinear-sw-L1: soft threshold per step
    beta: float = 1e-4             # ReLinear-sw-L2: decay fraction per step
    compact: bool = False
    device: str = "cpu"
    pieces_tol: float = 1e-9
    quiet: bool = False
    lbfgs_steps: int = 0           # L-BFGS stage after the Adam steps (inr.train.TrainConfig's lbfgs_* fields)
    lbfgs_fraction: float = 0.5
    lbfgs_lr: float = 1.0
    lbfgs_history: int = 50
    lbfgs_iter: int = 10

    def __post_init__(self):
        self.widths = tuple(int(w) for w in self.widths)
        self.strategies = tuple(self.strategies)
        bad = [s for s in self.strategies if s not in STRATEGIES]
        if bad:
            raise InputError(f"--strategies: unknown {bad}; choose from {', '.join(STRATEGIES)}")
        if len(self.widths) < 2 or self.widths[0] != 1 or self.widths[-1] != 1 or min(self.widths) < 1:
            raise InputError(f"--widths must start and end with 1 (a univariate fit), got {list(self.widths)}")
        if self.n_train < 2 or self.n_test < 1 or self.seeds < 1 or self.steps < 1:
            raise InputError("--n-train must be >= 2 and --n-test, --seeds, --steps >= 1")
        if max(self.widths) > MAX_WIDTH or len(self.widths) > MAX_LAYERS:
            raise InputError(f"--widths: at most {MAX_LAYERS} layers of at most {MAX_WIDTH} units, got "
                             f"{list(self.widths)}")
        for name, v, hi in (("--n-train", self.n_train, 1_000_000), ("--n-test", self.n_test, 1_000_000),
                            ("--seeds", self.seeds, 10_000), ("--steps", self.steps, 100_000_000)):
            if v > hi:
                raise InputError(f"{name} must be <= {hi:,}, got {v:,}")
        for name, v, lo, hi in (("--lr", self.lr, 0, None), ("--pieces-tol", self.pieces_tol, 0, None)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > lo):
                raise InputError(f"{name} must be a finite number > {lo}, got {v}")
        for name, v, lo, hi in (("--lr-final", self.lr_final, 0.0, 1.0), ("--alpha", self.alpha, 0.0, None),
                                ("--lr-g", self.lr_g, 0.0, None), ("--lr-b", self.lr_b, 0.0, None),
                                ("--beta", self.beta, 0.0, 1.0)):
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v >= lo and (hi is None or v <= hi)):
                rng = f">= {lo}" if hi is None else f"in [{lo}, {hi}]"
                raise InputError(f"{name} must be a finite number {rng}, got {v}")
        TrainConfig(**self.lbfgs())   # checks the lbfgs_* values

    def lbfgs(self) -> dict:
        return {k: getattr(self, k) for k in ("lbfgs_steps", "lbfgs_fraction", "lbfgs_lr", "lbfgs_history",
                                              "lbfgs_iter")}


def make_data(n_train: int, n_test: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """Equispaced training points on [-1, 1] and ``n_test`` evenly spaced test points off that grid."""
    x_train = np.linspace(-1.0, 1.0, n_train)
    mid = -1.0 + (2.0 * np.arange(n_test) + 1.0) / n_test
    h = 2.0 / (n_train - 1)
    for k in range(1000):
        x_test = mid * (1.0 - 1e-3 * k)
        d = np.abs(x_test[:, None] - x_train[None, :]).min()
        if d > 1e-3 * h:
            return x_train, x_test
    raise InputError(f"cannot place {n_test} test points off a grid of {n_train} training points")


def _strategy_setup(strategy: str, cfg: RungeConfig, net):
    """(param_groups, post_step) for one strategy."""
    if strategy == "relinear-sg":
        return relinear_groups(net, cfg.lr, cfg.lr_g, cfg.lr_b), None
    groups = [{"name": "all", "params": list(net.parameters()), "lr": cfg.lr}]
    if strategy == "relinear-sw-l1":
        return groups, ShrinkQuadratic(net, alpha=cfg.alpha)
    if strategy == "relinear-sw-l2":
        return groups, ShrinkQuadratic(net, beta=cfg.beta)
    return groups, None


def model_config(strategy: str, cfg: RungeConfig, seed: int, target_src: str) -> dict:
    return {"arch": "mlp" if strategy == "mlp" else "qnn", "widths": list(cfg.widths), "compact": cfg.compact,
            "relinear": strategy.startswith("relinear"), "domain": [-1.0, 1.0], "strategy": strategy,
            "seed": seed, "target": target_src}


def train_one(strategy: str, seed: int, cfg: RungeConfig, data: dict) -> dict:
    """Train one network; returns the run record (``net`` included, float32, on CPU)."""
    device = resolve_device(cfg.device)
    seed_everything(seed)
    conf = model_config(strategy, cfg, seed, data["target"])
    net = nets.net_from_config(conf, device=device)
    xt = torch.tensor(data["x_train"], dtype=torch.float32, device=device)[:, None]
    yt = torch.tensor(data["y_train"], dtype=torch.float32, device=device)[:, None]
    groups, post = _strategy_setup(strategy, cfg, net)
    tc = TrainConfig(steps=cfg.steps, lr=cfg.lr, lr_final=cfg.lr_final, schedule="cosine", seed=seed,
                     device=str(device), log_every=max(1, cfg.steps // 200), quiet=cfg.quiet,
                     desc=f"{strategy} seed {seed}", **cfg.lbfgs())

    def loss_fn(step):
        return torch.mean((net(xt) - yt) ** 2)

    rec = {"strategy": strategy, "seed": seed, "config": conf}
    try:
        res = fit(net, loss_fn, tc, param_groups=groups, post_step=post)
        rec.update(events=res.events, seconds=res.seconds, final_train_mse=res.final_loss,
                   history=res.history, error=None)
    except DivergenceError as e:
        rec.update(events=[{"event": str(e)}], seconds=float("nan"), final_train_mse=float("nan"),
                   history=[], error=str(e))
    net = net.cpu().float()
    with torch.no_grad():
        pred = net(torch.tensor(data["x_test"], dtype=torch.float32)[:, None])[:, 0].double().numpy()
    rmse = float(np.sqrt(np.mean((pred - data["y_test"]) ** 2)))
    rec.update(net=net, test_rmse=rmse,
               diverged=bool(rec["error"] or rec["events"] or not math.isfinite(rmse)))
    return rec


def classical_references(f, x_train: np.ndarray, x_test: np.ndarray) -> dict:
    """Cubic spline and Chebyshev-basis polynomial interpolation at the training points."""
    from scipy.interpolate import CubicSpline
    from numpy.polynomial import Chebyshev

    y_train, y_test = f(x_train), f(x_test)
    n = x_train.size
    fits = {
        "cubic spline (scipy, not-a-knot)": CubicSpline(x_train, y_train),
        f"polynomial interpolation, degree {n - 1} (Chebyshev basis, same points)":
            Chebyshev.fit(x_train, y_train, n - 1, domain=[-1, 1]),
        f"Chebyshev interpolation, degree {n - 1} ({n} Chebyshev points, not the same points)":
            Chebyshev.interpolate(f, n - 1, domain=[-1, 1]),
    }
    return {name: {"fn": fn, "test_rmse": float(np.sqrt(np.mean((fn(x_test) - y_test) ** 2)))}
            for name, fn in fits.items()}


def _stats(v) -> dict:
    a = np.asarray(v, dtype=float)
    ok = a[np.isfinite(a)]
    return {"mean": float(ok.mean()) if ok.size else float("nan"),
            "std": float(ok.std()) if ok.size else float("nan"),
            "min": float(ok.min()) if ok.size else float("nan"),
            "max": float(ok.max()) if ok.size else float("nan"), "n_finite": int(ok.size)}


def run_study(cfg: RungeConfig, out: str | os.PathLike) -> dict:
    """Train every strategy x seed, expand every model into pieces, write results to ``out``."""
    from approx import report

    src, _, f = parse_target(cfg.target)
    x_train, x_test = make_data(cfg.n_train, cfg.n_test)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    data = {"target": src, "x_train": x_train, "y_train": f(x_train), "x_test": x_test, "y_test": f(x_test)}
    t0 = time.time()
    runs = []
    for strategy in cfg.strategies:
        for k in range(cfg.seeds):
            rec = train_one(strategy, cfg.seed + k, cfg, data)
            folder = out / "models" / f"{strategy}-seed{rec['seed']}"
            nets.save(rec["net"], rec["config"], folder)
            rec["model_dir"] = str(folder.relative_to(out))  # relative: the folder may be renamed
            if math.isfinite(rec["test_rmse"]):
                net64 = rec["net"].double()
                tp = time.time()
                pw = pieces.expand(net64, -1.0, 1.0)
                chk = pieces.check(net64, pw)
                rec["pieces"] = {"n_pieces": len(pw.pieces), "max_degree": max(p.degree for p in pw.pieces),
                                 "max_abs_coef_per_degree": pw.max_coefficients().tolist(),
                                 "seconds": time.time() - tp, **chk,
                                 "within_tol": chk["relative_error"] <= cfg.pieces_tol}
                rec["pw"] = pw
            if not cfg.quiet:
                pc = rec.get("pieces", {})
                print(f"{strategy:>15s} seed {rec['seed']}: test RMSE {rec['test_rmse']:.4f}  "
                      f"pieces {pc.get('n_pieces', '-')}  |formula-net|/max {pc.get('relative_error', float('nan')):.1e}"
                      f"  {'DIVERGED ' if rec['diverged'] else ''}({rec['seconds']:.1f}s)", file=sys.stderr)
            runs.append(rec)
    if not any(r["error"] is None and math.isfinite(r["test_rmse"]) for r in runs):   # as inr: an error, no folder
        first = next((r["error"] for r in runs if r.get("error")), "non-finite predictions")
        raise DivergenceError(f"every run of the study diverged (non-finite loss or predictions; first: "
                              f"{' '.join(str(first).split())[:200]}); lower --lr or check the options")
    refs = classical_references(f, x_train, x_test)
    summary = {}
    for s in cfg.strategies:
        rs = [r for r in runs if r["strategy"] == s]
        coefs = [r["pieces"]["max_abs_coef_per_degree"] for r in rs if "pieces" in r]
        width = max((len(c) for c in coefs), default=0)
        per_degree = np.zeros(width)
        for c in coefs:
            per_degree[:len(c)] = np.maximum(per_degree[:len(c)], c)
        summary[s] = {"test_rmse": _stats([r["test_rmse"] for r in rs]),
                      "diverged": sum(r["diverged"] for r in rs), "runs": len(rs),
                      "n_pieces": _stats([r["pieces"]["n_pieces"] for r in rs if "pieces" in r]),
                      "max_abs_coef_per_degree": per_degree.tolist(),
                      "pieces_max_relative_error": max((r["pieces"]["relative_error"] for r in rs if "pieces" in r),
                                                       default=float("nan")),
                      "seconds_per_run": _stats([r["seconds"] for r in rs])}
    metrics = {
        "study": "runge", "config": asdict(cfg), "target": src, "x_train_count": int(x_train.size),
        "x_test_range": [float(x_test.min()), float(x_test.max())], "summary": summary,
        "references": {k: {"test_rmse": v["test_rmse"]} for k, v in refs.items()},
        "runs": [{k: v for k, v in r.items() if k not in ("net", "pw", "history")} for r in runs],
        "paper_table_ii_rmse": {"relinear-sw-l1": 0.0656, "relinear-sw-l2": 0.0426, "relinear-sg": 0.0205},
        "device": str(resolve_device(cfg.device)), "versions": versions("scipy", "sympy"), "seconds": time.time() - t0,
        "pieces_all_within_tol": all(r.get("pieces", {}).get("within_tol", False) for r in runs),
    }
    report.write_all(out, metrics, runs, refs, data, f)
    return metrics


def study(cfg: RungeConfig, out: str | os.PathLike) -> dict:
    """:func:`run_study` into a new run folder ``out`` (it must not exist; built under a hidden name and
    renamed when complete, :class:`inr.runs.RunFolder`); returns the summary (also ``out/metrics.json``)."""
    from inr.runs import RunFolder

    parse_target(cfg.target)          # a bad target fails before the folder is touched
    with RunFolder(out) as run:
        summary = run_study(cfg, run.path)
    return summary
