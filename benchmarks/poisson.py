"""High-frequency Poisson benchmark (docs/methods.md section 5; the LRNN paper's PDE study).

n in {1, 2, 4, 8} x models {lrnn-siren, siren, mlp-tanh, kan} x parameter budgets {16k, 132k}, every
run under the same wall-clock budget (``--seconds``), exact boundary conditions, per-model PDE
defaults from ``pde.models.pde_defaults`` and ``pde.solve.DEFAULT_LR``.  Writes
``results/poisson/``: ``metrics.json`` (every run), ``table.md`` (relative L2 and wall time),
``error_vs_params.png`` (one panel per n) and one run folder per run under ``runs/``.

    python benchmarks/poisson.py                      # full study (~35 min on 2 shared cores)
    python benchmarks/poisson.py --quick              # seconds; the test uses it
    python benchmarks/poisson.py --ns 2,4 --models lrnn-siren,siren --reuse
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from pde import kan as kan_mod  # noqa: E402
from pde import models  # noqa: E402
from inr.runfiles import versions  # noqa: E402
from pde.solve import SolveConfig, solve, write_files  # noqa: E402


def _ints(s: str) -> list[int]:
    return [int(v) for v in s.split(",") if v]


def parse(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--ns", type=_ints, default=[1, 2, 4, 8], help="frequencies n (comma-separated)")
    p.add_argument("--models", default="lrnn-siren,siren,mlp-tanh,kan", help="models (comma-separated)")
    p.add_argument("--budgets", type=_ints, default=[16000, 132000], help="parameter budgets (comma-separated)")
    p.add_argument("--seconds", type=float, default=60.0, help="wall-clock budget of every run")
    p.add_argument("--steps", type=int, default=100000, help="step cap of every run")
    p.add_argument("--points", type=int, default=1024, help="interior collocation points")
    p.add_argument("--boundary", default="exact", choices=("exact", "penalty"))
    p.add_argument("--resample", action="store_true", help="new collocation points every step")
    p.add_argument("--eval-res", type=int, default=256, help="evaluation grid points per axis")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1,
                   help="torch CPU threads (1 avoids thread oversubscription on a shared machine)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default="results/poisson")
    p.add_argument("--kan-max-params", type=int, default=40000,
                   help="skip KAN runs above this budget: pykan's spline basis tensor grows like points x "
                        "params (132k params x 1024 points needs several GB through the double backward)")
    p.add_argument("--reuse", action="store_true", help="keep finished run folders (same settings) instead of rerunning")
    p.add_argument("--quick", action="store_true", help="tiny setting: n=2, lrnn-siren and mlp-tanh, 5 steps")
    p.add_argument("--quiet", action="store_true")
    a = p.parse_args(argv)
    a.models = [m for m in a.models.split(",") if m]
    if a.quick:
        a.ns, a.models, a.budgets = [2], ["lrnn-siren", "mlp-tanh"], [600, 2000]
        a.seconds, a.steps, a.points, a.eval_res = 30.0, 5, 64, 33
    for m in a.models:
        if m not in models.MODELS:
            p.error(f"unknown model {m!r}; choose from {', '.join(models.MODELS)}")
    if min(a.ns) <= 0 or min(a.budgets) <= 0 or a.seconds <= 0 or a.steps <= 0 or a.points <= 0:
        p.error("--ns, --budgets, --seconds, --steps and --points must be positive")
    return a


def run_one(a, n: int, model: str, budget: int) -> dict:
    folder = os.path.join(a.out, "runs", f"n{n}_{model}_{budget}")
    cfg = SolveConfig(problem="poisson2d", n=n, model=model, params=budget, boundary=a.boundary, points=a.points,
                      resample=a.resample, steps=a.steps, seconds=a.seconds, seed=a.seed, device=a.device,
                      eval_res=a.eval_res, quiet=a.quiet)
    done = os.path.join(folder, "metrics.json")
    if a.reuse and os.path.exists(done):
        with open(done) as f:
            m = json.load(f)
        from dataclasses import asdict
        if m.get("config") == json.loads(json.dumps(asdict(cfg))):
            return m
    sol = solve(cfg)
    write_files(sol, folder)  # a benchmark cell: rerun in place when its config changed
    return sol.metrics


def table(runs: list[dict], a) -> str:
    lines = [f"Poisson -Laplace(u) = f on [0,1]^2, u* = sin(n pi x) sin(n pi y), {a.boundary} boundary, "
             f"{a.points} collocation points, {a.seconds:g} s wall budget per run (step cap {a.steps}), "
             f"seed {a.seed}. Relative L2 on a {a.eval_res}x{a.eval_res} grid (final iterate); "
             "params = trainable count; steps done in the budget.",
             f"Machine: {platform.machine()}, {os.cpu_count()} CPUs, {a.threads} torch thread(s), device {a.device}; "
             "the CPUs may be shared with other jobs, so steps per budget vary between runs.", "",
             "| n | model | budget | params | rel. L2 | max error | steps | seconds |",
             "|---|---|---|---|---|---|---|---|"]
    for r in runs:
        if "skipped" in r:
            lines.append(f"| {r['n']} | {r['model']} | {r['budget']} | - | skipped: {r['skipped']} | | | |")
            continue
        lines.append(f"| {r['n']} | {r['model']} | {r['budget']} | {r['params']} | {r['rel_l2']:.2e} | "
                     f"{r['max_error']:.2e} | {r['steps']} | {r['seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def plot(runs: list[dict], ns: list[int], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axs = plt.subplots(1, len(ns), figsize=(4 * len(ns), 3.6), squeeze=False)
    for ax, n in zip(axs[0], ns):
        for model in dict.fromkeys(r["model"] for r in runs):
            pts = sorted((r["params"], r["rel_l2"]) for r in runs
                         if r["n"] == n and r["model"] == model and "rel_l2" in r)
            if pts:
                ax.loglog(*zip(*pts), "o-", label=model)
        ax.set_title(f"n = {n}")
        ax.set_xlabel("parameters")
        ax.grid(True, which="both", alpha=0.3)
    axs[0][0].set_ylabel("relative L2 error")
    axs[0][-1].legend(fontsize=8)
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=110)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None) -> int:
    a = parse(argv)
    torch.set_num_threads(a.threads)
    os.makedirs(a.out, exist_ok=True)
    runs, t0 = [], time.time()
    for n in a.ns:
        for model in a.models:
            for budget in a.budgets:
                row = {"n": n, "model": model, "budget": budget}
                if model == "kan" and not kan_mod.available():
                    msg = "pykan not installed (pip install 'mulneurons[kan]')"
                    print(f"n={n} {model} {budget}: skipped, {msg}", file=sys.stderr)
                    runs.append({**row, "skipped": msg})
                    continue
                if model == "kan" and budget > a.kan_max_params:
                    msg = f"budget above --kan-max-params {a.kan_max_params}"
                    print(f"n={n} {model} {budget}: skipped, {msg}", file=sys.stderr)
                    runs.append({**row, "skipped": msg})
                    continue
                m = run_one(a, n, model, budget)
                runs.append({**row, **{k: m[k] for k in ("params", "rel_l2", "max_error", "final_residual_rms",
                                                         "steps", "seconds", "lr", "model_config")}})
                print(f"n={n} {model:10s} budget {budget:6d}: params {m['params']:6d} rel L2 {m['rel_l2']:.3e} "
                      f"({m['steps']} steps, {m['seconds']:.0f} s)", file=sys.stderr, flush=True)
    summary = {"runs": runs, "settings": {k: v for k, v in vars(a).items()}, "versions": versions(),
               "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "threads": a.threads},
               "command": " ".join(sys.argv), "total_seconds": round(time.time() - t0, 1)}
    tmp = os.path.join(a.out, "metrics.json.tmp")
    with open(tmp, "w") as f:
        json.dump(summary, f, indent=2, default=str)
    os.replace(tmp, os.path.join(a.out, "metrics.json"))
    with open(os.path.join(a.out, "table.md.tmp"), "w") as f:
        f.write(table(runs, a))
    os.replace(os.path.join(a.out, "table.md.tmp"), os.path.join(a.out, "table.md"))
    plot(runs, a.ns, os.path.join(a.out, "error_vs_params.png"))
    print(table(runs, a))
    return 0


if __name__ == "__main__":
    sys.exit(main())
