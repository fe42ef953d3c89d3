"""High-frequency Poisson study (docs/methods.md section 5; the LRNN paper's PDE claim).

``-Laplace(u) = 2 (n pi)^2 sin(n pi x) sin(n pi y)`` on [0, 1]^2, u = 0 on the boundary, for n in
``--ns``; models ``--models`` at parameter budgets ``--budgets``; every run with the same recipe
(``--recipe``: the optimiser stages, collocation sampling and Laplacian mode of ``pde.solve``) and either
the same wall budget (``--mode time``, ``--seconds``) or the same number of steps (``--mode steps``).
The peer, DeepXDE's documented Poisson example adapted to the same problem
(``benchmarks/poisson_peer.py``), runs in the same study when installed (skipped with a message when
not).  Errors: relative L2 and max error of the final iterate on a dense ``--eval-res``^2 grid that
training never sees; seconds to relative L2 1e-2 / 1e-3 from evaluations every ``--eval-every`` steps
(off the clock).

Writes a new folder ``--out`` (refused if it exists; built under a hidden name, renamed when done):
``metrics.json``, ``table.md``, ``error_vs_params.png`` (one panel per n), ``error_vs_time.png`` (one
panel per n) and ``runs/<n>-<model>-<budget>/`` (each run's config, model, history, solution plot).

    python benchmarks/poisson.py --ns 4 --models lrnn-siren,siren,mlp-tanh --seconds 300
    python benchmarks/poisson.py --mode steps --steps 1000 --ns 2,4,8
    python benchmarks/poisson.py --quick          # seconds; the test uses it
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
import poisson_peer  # noqa: E402  (beside this script; imports only the standard library at load)
from inr.runfiles import versions  # noqa: E402
from inr.runs import RunFolder  # noqa: E402
from pde import kan as kan_mod  # noqa: E402
from pde import models  # noqa: E402
from pde.solve import SolveConfig, solve, write_files  # noqa: E402

# Recipes: the same optimiser stages and sampling for every model of a study.
#   adam:        Adam on one fixed set of points (the earlier protocol)
#   adam+lbfgs:  Adam with fresh uniform points every step, then L-BFGS (strong Wolfe) on one fixed set of
#                --lbfgs-points points for the --lbfgs-fraction share of the budget
#   rad+lbfgs:   as adam+lbfgs, but the Adam points come from residual-based adaptive sampling
RECIPES = {
    "adam": {"resample": False},
    "adam+lbfgs": {"resample": True, "lbfgs": True},
    "rad+lbfgs": {"sampling": "rad", "lbfgs": True},
}


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ns", type=_ints, default=[1, 2, 4, 8, 16], help="frequencies n (comma-separated)")
    p.add_argument("--models", default="lrnn-siren,siren,mlp-tanh,kan", help="models (comma-separated)")
    p.add_argument("--budgets", type=_ints, default=[16000, 132000], help="parameter budgets (comma-separated)")
    p.add_argument("--runs", default=None,
                   help="explicit runs instead of the full grid: 'n:model:budget' items, comma-separated "
                        "(e.g. 4:lrnn-siren:16000,4:siren:132000)")
    p.add_argument("--mode", choices=("time", "steps"), default="time",
                   help="equal wall budget (--seconds, step cap --steps) or equal steps (--steps, no time limit)")
    p.add_argument("--seconds", type=float, default=300.0, help="time budget of every run (mode time; see --clock)")
    p.add_argument("--clock", choices=("wall", "cpu"), default="cpu",
                   help="what --seconds measures: this process's CPU seconds (with --threads 1, the time an unshared "
                        "core takes, so runs on a shared machine stay comparable) or wall seconds")
    p.add_argument("--steps", type=int, default=100000,
                   help="Adam steps: the cap in mode time, the count in mode steps")
    p.add_argument("--recipe", choices=tuple(RECIPES), default="adam+lbfgs", help="optimiser stages and sampling")
    p.add_argument("--lbfgs-fraction", type=float, default=0.7, help="share of the wall budget for L-BFGS (mode time)")
    p.add_argument("--lbfgs-steps", type=int, default=300,
                   help="L-BFGS outer steps: the cap in mode time, the count in mode steps")
    p.add_argument("--lbfgs-points", type=int, default=4096, help="fixed collocation points of the L-BFGS stage")
    p.add_argument("--points", type=int, default=1024, help="collocation points per Adam step")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--eval-res", type=int, default=256, help="evaluation grid points per axis")
    p.add_argument("--eval-every", type=int, default=50, help="grid evaluations every N steps (off the clock)")
    p.add_argument("--peer", choices=("auto", "off"), default="auto",
                   help="DeepXDE peer at every n of the study (auto: when installed)")
    p.add_argument("--peer-iterations", type=int, default=5000,
                   help="DeepXDE Adam iterations (its example's count; the wall budget also applies)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 avoids thread oversubscription on a shared machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/poisson")
    p.add_argument("--kan-max-params", type=int, default=40000,
                   help="skip KAN runs above this budget: pykan's spline basis tensor grows like points x params")
    p.add_argument("--quick", action="store_true", help="tiny setting: n=2, lrnn-siren and mlp-tanh, a few steps")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    a.models = [m for m in a.models.split(",") if m]
    if a.quick:
        a.ns, a.models, a.budgets = [2], ["lrnn-siren", "mlp-tanh"], [600, 2000]
        a.seconds, a.steps, a.lbfgs_steps, a.points, a.lbfgs_points = 20.0, 6, 2, 64, 128
        a.eval_res, a.eval_every, a.peer_iterations = 33, 3, 20
    if a.runs:
        try:
            a.runs = [(int(n), m, int(b)) for n, m, b in (item.split(":") for item in a.runs.split(",") if item)]
        except ValueError:
            p.error(f"--runs takes n:model:budget items, got {a.runs!r}")
    else:
        a.runs = [(n, m, b) for n in a.ns for m in a.models for b in a.budgets]
    a.ns = sorted({n for n, _, _ in a.runs})
    for _, m, _ in a.runs:
        if m not in models.MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(models.MODELS)}")
    if min(a.ns) <= 0 or min(b for _, _, b in a.runs) <= 0 or a.seconds <= 0 or a.steps <= 0 or a.points <= 0:
        p.error("n, budgets, --seconds, --steps and --points must be positive")
    if not 0 < a.lbfgs_fraction < 1:
        p.error("--lbfgs-fraction must be in (0, 1)")
    return a


def solve_config(a, n: int, model: str, budget: int) -> SolveConfig:
    recipe = dict(RECIPES[a.recipe])
    lbfgs = recipe.pop("lbfgs", False)
    time_mode = a.mode == "time"
    return SolveConfig(problem="poisson2d", n=n, model=model, params=budget, points=a.points, steps=a.steps,
                       seconds=a.seconds if time_mode else None, seed=a.seed, device=a.device, dtype=a.dtype,
                       eval_res=a.eval_res, eval_every=a.eval_every, quiet=a.quiet,
                       lbfgs_steps=a.lbfgs_steps if lbfgs else 0, lbfgs_fraction=a.lbfgs_fraction,
                       lbfgs_points=a.lbfgs_points if lbfgs else None, clock=a.clock, **recipe)


def _curve(history: list[dict]) -> list[tuple]:
    return [(r["step"], r["seconds"], r["eval_rel_l2"]) for r in history if r.get("eval_rel_l2") is not None]


def run_one(a, out: Path, n: int, model: str, budget: int) -> dict:
    cfg = solve_config(a, n, model, budget)
    sol = solve(cfg)
    folder = out / "runs" / f"n{n}-{model}-{budget}"
    write_files(sol, str(folder))
    m = sol.metrics
    lb = m.get("lbfgs") or {}
    adam = lb.get("switch_after_step") if lb.get("switch_after_step") is not None else m["steps"]
    return {"n": n, "model": model, "budget": budget,
            **{k: m.get(k) for k in ("params", "rel_l2", "max_error", "final_residual_rms", "steps", "seconds",
                                     "lr", "model_config", "time_to_rel_l2", "stopped_by", "laplacian", "cpu_seconds",
                                     "wall_seconds", "clock")},
            "adam_steps": adam, "lbfgs_steps": m["steps"] - adam,   # L-BFGS: outer steps of --lbfgs-iter iterations
            "curve": _curve(sol.fit.history), "run_dir": os.path.relpath(folder, out)}


def run_peer(a, n: int) -> dict:
    spec = {"n": n, "iterations": a.peer_iterations, "seconds": a.seconds if a.mode == "time" else None,
            "points": a.points, "seed": a.seed, "threads": a.threads, "eval_res": a.eval_res, "clock": a.clock}
    proc = subprocess.run([sys.executable, str(HERE / "poisson_peer.py"), json.dumps(spec)], capture_output=True,
                          text=True, env={**os.environ, "DDE_BACKEND": "pytorch"})
    if proc.returncode != 0:
        return {"n": n, "model": "deepxde", "skipped": (proc.stderr.strip().splitlines() or ["failed"])[-1]}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    return {"n": n, "model": "deepxde", "budget": r.get("params"), **r}


def _fmt(v, spec=".2e"):
    return "-" if v is None else format(v, spec)


def table(runs: list[dict], a) -> str:
    budget = (f"{a.seconds:g} s {'CPU (1 thread)' if a.clock == 'cpu' else 'wall'} budget per run (Adam step cap {a.steps})" if a.mode == "time"
              else f"{a.steps} Adam steps per run, no time limit")
    recipe = {"adam": "Adam on one fixed set of points",
              "adam+lbfgs": f"Adam with {a.points} fresh uniform points per step, then L-BFGS on {a.lbfgs_points} "
                            f"fixed points ({'%g%% of the budget' % (100 * a.lbfgs_fraction) if a.mode == 'time' else f'{a.lbfgs_steps} outer steps'})",
              "rad+lbfgs": f"Adam on {a.points} RAD-sampled points, then L-BFGS on {a.lbfgs_points} fixed points"}[a.recipe]
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    lines = [f"Poisson -Laplace(u) = f on [0,1]^2, u* = sin(n pi x) sin(n pi y), exact boundary ansatz, {a.dtype}; "
             f"{budget}; recipe {a.recipe}: {recipe}; seed {a.seed}. Relative L2 / max error of the final iterate "
             f"on a {a.eval_res}x{a.eval_res} grid; t(1e-2), t(1e-3): training seconds until the grid error first "
             f"fell below (evaluated every {a.eval_every} steps, off the clock).",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {a.threads} torch thread(s), device {a.device}, "
             f"load average {load:.1f} at the end; other jobs may share the CPUs. Times are "
             + ("CPU seconds of the run's process (what an unshared core takes); wall s shows the real time."
                if a.clock == "cpu" else "wall seconds."), "",
             "| n | model | budget | params | rel. L2 | max error | t(1e-2) s | t(1e-3) s | Adam steps | L-BFGS outer steps | seconds | wall s |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(runs, key=lambda r: (r["n"], r["model"] == "deepxde", r["model"], r.get("budget") or 0)):
        if "skipped" in r:
            lines.append(f"| {r['n']} | {r['model']} | {r.get('budget', '-')} | - | skipped: {r['skipped']} | | | | | | | |")
            continue
        tt = r.get("time_to_rel_l2") or {}
        t2 = lambda key: _fmt((tt.get(key) or {}).get("seconds") if isinstance(tt.get(key), dict) else tt.get(key), ".1f")
        steps = (r.get("adam_steps"), r.get("lbfgs_steps")) if r["model"] != "deepxde" else (r.get("iterations"), 0)
        lines.append(f"| {r['n']} | {r['model']} | {r.get('budget')} | {r['params']} | {r['rel_l2']:.2e} | "
                     f"{r['max_error']:.2e} | {t2('0.01')} | {t2('0.001')} | {steps[0]} | {steps[1]} | "
                     f"{r['seconds']:.1f} | {_fmt(r.get('wall_seconds'), '.1f')} |")
    return "\n".join(lines) + "\n"


def _figure(ns, width=4.0):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * len(ns), 3.6))
    FigureCanvasAgg(fig)
    return fig, fig.subplots(1, len(ns), squeeze=False)[0]


def _finish(fig, axs, ns, xlabel: str, ylabel: str, path: Path) -> None:
    """Titles, labels, grid and legend of the one-panel-per-n figures, then save."""
    for ax, n in zip(axs, ns):
        ax.set_title(f"n = {n}")
        ax.set_xlabel(xlabel)
        ax.grid(True, which="both", alpha=0.3)
    axs[0].set_ylabel(ylabel)
    axs[-1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def plot_params(runs: list[dict], ns: list[int], path: Path) -> None:
    fig, axs = _figure(ns)
    for ax, n in zip(axs, ns):
        for model in dict.fromkeys(r["model"] for r in runs):
            pts = sorted((r["params"], r["rel_l2"]) for r in runs if r["n"] == n and r["model"] == model
                         and r.get("rel_l2") is not None)
            if pts:
                ax.loglog(*zip(*pts), "o-" if model != "deepxde" else "k*", label=model)
    _finish(fig, axs, ns, "parameters", "relative L2 error", path)


def plot_time(runs: list[dict], ns: list[int], path: Path) -> None:
    fig, axs = _figure(ns)
    for ax, n in zip(axs, ns):
        for r in runs:
            if r["n"] != n or not r.get("curve"):
                continue
            _, secs, errs = zip(*r["curve"])
            ax.semilogy(secs, errs, lw=1, label=f"{r['model']} {r['params']}")
        for r in runs:
            if r["n"] == n and r["model"] == "deepxde" and r.get("rel_l2") is not None:
                ax.semilogy([r["seconds"]], [r["rel_l2"]], "k*", ms=9, label="DeepXDE (final)")
    _finish(fig, axs, ns, "training seconds", "relative L2 error (grid)", path)


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    folder = RunFolder(a.out)   # refused now if it exists, before any work
    peer = a.peer == "auto"
    if peer and not poisson_peer.available():
        print("DeepXDE not installed (pip install -e '.[peer]'): the peer is skipped", file=sys.stderr)
        peer = False
    runs, t0 = [], time.time()
    with folder:
        out = folder.path

        def save():
            summary = {"runs": runs, "settings": {k: v for k, v in vars(a).items()}, "versions": versions(),
                       "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads},
                       "command": "python benchmarks/poisson.py " + " ".join(sys.argv[1:] if argv is None else argv),
                       "total_seconds": round(time.time() - t0, 1)}
            folder.write_json("metrics.json", summary)
            folder.write_text("table.md", table(runs, a))

        for n, model, budget in a.runs:
            row = {"n": n, "model": model, "budget": budget}
            if model == "kan" and not kan_mod.available():
                runs.append({**row, "skipped": "pykan not installed (pip install 'mulneurons[kan]')"})
            elif model == "kan" and budget > a.kan_max_params:
                runs.append({**row, "skipped": f"budget above --kan-max-params {a.kan_max_params}"})
            else:
                runs.append(run_one(a, out, n, model, budget))
            r = runs[-1]
            print(f"n={n} {model:10s} budget {budget:6d}: " + (f"skipped ({r['skipped']})" if "skipped" in r else
                  f"params {r['params']:6d} rel L2 {r['rel_l2']:.3e} ({r['adam_steps']} Adam + {r['lbfgs_steps']} "
                  f"L-BFGS steps, {r['seconds']:.0f} s)"), file=sys.stderr, flush=True)
            save()
        if peer:
            for n in a.ns:
                runs.append(run_peer(a, n))
                r = runs[-1]
                print(f"n={n} deepxde: " + (f"skipped ({r['skipped']})" if "skipped" in r else
                      f"params {r['params']} rel L2 {r['rel_l2']:.3e} ({r['iterations']} iterations, "
                      f"{r['seconds']:.0f} s)"), file=sys.stderr, flush=True)
                save()
        save()
        plot_params(runs, a.ns, out / "error_vs_params.png")
        plot_time(runs, a.ns, out / "error_vs_time.png")
        text = table(runs, a)
    print(text)
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:   # e.g. an existing --out
        print(f"poisson: {e}", file=sys.stderr)
        sys.exit(2)
