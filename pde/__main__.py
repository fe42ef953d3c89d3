"""``python -m pde solve ...``: solve a Poisson problem with a PINN and write a run folder.

``python -m pde list`` prints the problems and models.
"""
from __future__ import annotations

import argparse
import json
import sys

import torch

from inr.cliutil import run_main
from inr.runs import RunFolder
from inr.train import resolve_threads

from . import models, problems
from .solve import DEFAULT_LR, DTYPES, SolveConfig, solve, write_files

# model options: flag -> (type, the registry's keyword)
HYPER = {"hidden": int, "hidden_layers": int, "rank": int, "depth": int, "dbar": int, "width": int,
         "w0": float, "w0_first": float, "shared": None, "component_std": float, "grid": int, "k": int,
         "n_freqs": int, "scale": float}


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m pde", description=__doc__.split("\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    sub.add_parser("list", help="print the problems and models")
    s = sub.add_parser("solve", help="train a PINN and write a run folder",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    s.add_argument("--problem", default="poisson2d", help=f"one of: {', '.join(problems.PROBLEMS)}")
    s.add_argument("--n", type=int, default=1, help="frequency n of poisson2d's u* = sin(n pi x) sin(n pi y)")
    s.add_argument("--model", default="lrnn-siren", help=f"one of: {', '.join(models.MODELS)}")
    s.add_argument("--params", type=int, default=16000,
                   help="parameter budget (picks the width); 0 = use --hidden/--rank as given")
    s.add_argument("--steps", type=int, default=2000, help="optimizer steps (upper limit)")
    s.add_argument("--seconds", type=float, default=None, help="wall-clock budget; stops at whichever comes first")
    s.add_argument("--lr", type=float, default=None,
                   help="Adam learning rate (cosine decay to lr-final x lr); default per model: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()))
    s.add_argument("--lr-final", type=float, default=0.1, help="final learning rate as a fraction of --lr")
    s.add_argument("--schedule", default="cosine", choices=("cosine", "exponential", "constant"))
    s.add_argument("--points", type=int, default=1024, help="interior collocation points")
    s.add_argument("--boundary-points", type=int, default=None, help="boundary points (penalty); default points/4")
    s.add_argument("--boundary", default="exact", choices=("exact", "penalty"),
                   help="exact: u = lift + x(1-x)y(1-y)-bubble * net; penalty: weighted boundary loss")
    s.add_argument("--penalty", type=float, default=100.0, help="boundary loss weight (--boundary penalty)")
    s.add_argument("--resample", action="store_true", help="draw new collocation points every step")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--device", default="auto", help="auto, cpu or cuda")
    s.add_argument("--dtype", default="float32", choices=tuple(DTYPES))
    s.add_argument("--threads", default="auto",
                   help="torch CPU threads: a number, or auto (1 when the load average already fills the CPUs, "
                        "where more threads spin-wait and run many times slower; else torch's default)")
    s.add_argument("--eval-res", type=int, default=None, help="evaluation grid points per axis (2-D 256, 1-D 8193)")
    s.add_argument("--eval-every", type=int, default=0, help="log the relative L2 error every N steps (0: end only)")
    s.add_argument("--out", default=None, help="run folder to create, must not exist (metrics.json, history.csv, solution.png, model.pt)")
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    g = s.add_argument_group("model options (defaults: pde.models.pde_defaults, scaled with n)")
    for name, typ in HYPER.items():
        flag = "--" + name.replace("_", "-")
        if typ is None:
            g.add_argument(flag, action="store_true", default=None, help="LRNN: share components across neurons")
        else:
            g.add_argument(flag, type=typ, default=None)
    return p


def config_from_args(a: argparse.Namespace) -> SolveConfig:
    hyper = {k: getattr(a, k) for k in HYPER if getattr(a, k) is not None}
    return SolveConfig(problem=a.problem, n=a.n, model=a.model, params=a.params or None, hyper=hyper,
                       boundary=a.boundary, penalty=a.penalty, points=a.points, boundary_points=a.boundary_points,
                       resample=a.resample, steps=a.steps, seconds=a.seconds, lr=a.lr, lr_final=a.lr_final,
                       schedule=a.schedule, seed=a.seed, device=a.device, dtype=a.dtype, eval_res=a.eval_res,
                       eval_every=a.eval_every, quiet=a.quiet)


def set_threads(spec: str) -> None:
    if spec == "auto":
        k = resolve_threads("auto")
        if k:
            torch.set_num_threads(k)
        return
    try:
        k = int(spec)
    except ValueError:
        k = 0
    if k < 1:
        raise ValueError(f"--threads must be a positive integer or 'auto', got {spec!r}")
    torch.set_num_threads(k)


def main(argv=None) -> int:
    a = _parser().parse_args(argv)
    if a.command == "list":
        print("problems:", ", ".join(problems.PROBLEMS))
        print("models:  ", ", ".join(models.MODELS))
        return 0
    return run_main("python -m pde", lambda: _solve(a))


def _solve(a) -> int:
    if a.params is not None and a.params < 0:
        raise ValueError(f"--params must be >= 0, got {a.params}")
    cfg = config_from_args(a)
    cfg.validate()
    run = RunFolder(a.out) if a.out else None   # refuses an existing --out before the solve
    set_threads(a.threads)
    sol = solve(cfg)
    if run is not None:
        with run:
            write_files(sol, str(run.path))
    m = sol.metrics
    print(json.dumps({k: m[k] for k in ("model", "params", "rel_l2", "max_error", "final_residual_rms", "seconds",
                                        "steps")}, default=str))
    if a.out:
        print(f"run folder: {a.out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
