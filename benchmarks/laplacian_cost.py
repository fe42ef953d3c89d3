"""Forward vs reverse Laplacian: seconds per PINN training step (residual loss + backward).

    python benchmarks/laplacian_cost.py --threads 1 --out results/laplacian_cost
    python benchmarks/laplacian_cost.py --models siren lrnn-siren --points 1024 --repeats 3
    python benchmarks/laplacian_cost.py --quick --out /tmp/lc

Every model ``pde`` builds (not KAN, which has no forward rules) at the budgets ``--params`` (16k and 132k by
default, with :func:`pde.models.pde_defaults` for poisson2d, n = 4, exact boundary, float32) and the interior
point counts ``--points`` (1024, 4096).  A step is ``residual(ansatz, laplacian=mode).square().mean()``,
``backward()`` and nothing else (no optimiser).  The two modes of one configuration alternate, one step
each, after a warm-up step each, and the median over ``--repeats`` is reported, so the ratio holds on a
shared machine.  The hash grid has no reverse column: its encoding's backward is once-differentiable, so
reverse mode cannot take its Laplacian.  Writes a markdown table to stdout and, with ``--out`` (a folder that
must not exist), table.md and metrics.json.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from inr.runfiles import versions  # noqa: E402
from inr.runs import RunError, RunFolder  # noqa: E402
from pde import models, problems  # noqa: E402
from pde.operators import Ansatz, residual  # noqa: E402

DEFAULT_MODELS = tuple(m for m in models.MODELS if m != "kan")


def step_seconds(ansatz, problem, x, mode: str) -> float:
    t = time.perf_counter()
    ansatz.zero_grad(set_to_none=True)
    residual(ansatz, problem, x, laplacian=mode).square().mean().backward()
    return time.perf_counter() - t


def measure(name: str, params: int, points: int, repeats: int, n: int = 4, seed: int = 0) -> dict:
    problem = problems.get("poisson2d", n)
    torch.manual_seed(seed)
    net = models.build(name, problem.dim, 1, params=params, **models.pde_defaults(name, n, problem.dim))
    ansatz = Ansatz(net, problem, "exact")
    x = problem.sample_interior(points, torch.Generator().manual_seed(seed), "cpu", torch.float32)
    modes = ["forward"] if name == "hash" else ["forward", "reverse"]
    times: dict = {m: [] for m in modes}
    for m in modes:
        step_seconds(ansatz, problem, x, m)   # warm-up
    for _ in range(repeats):
        for m in modes:
            times[m].append(step_seconds(ansatz, problem, x, m))
    fwd = statistics.median(times["forward"])
    rev = statistics.median(times["reverse"]) if "reverse" in times else None
    return {"model": name, "params": models.count_params(ansatz), "budget": params, "points": points,
            "forward_s": fwd, "reverse_s": rev, "ratio": (rev / fwd) if rev else None, "repeats": repeats,
            "times": times}


def table(rows) -> str:
    out = ["| model | params | points | reverse s/step | forward s/step | reverse / forward |",
           "|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        rev = f"{r['reverse_s']:.4f}" if r["reverse_s"] else "n/a"
        ratio = f"{r['ratio']:.2f}" if r["ratio"] else "n/a"
        out.append(f"| {r['model']} | {r['params']} | {r['points']} | {rev} | {r['forward_s']:.4f} | {ratio} |")
    return "\n".join(out)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=DEFAULT_MODELS)
    p.add_argument("--params", type=int, nargs="+", default=[16_000, 132_000], help="parameter budgets")
    p.add_argument("--points", type=int, nargs="+", default=[1024, 4096], help="interior collocation points")
    p.add_argument("--repeats", type=int, default=5, help="timed steps per mode (median reported)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads")
    p.add_argument("--out", default=None, help="folder to create (must not exist): table.md, metrics.json")
    p.add_argument("--quick", action="store_true", help="tiny sizes, for the test suite")
    a = p.parse_args(argv)
    try:
        run = RunFolder(a.out) if a.out else None   # refuses an existing --out before any work
    except RunError as e:
        print(f"laplacian_cost.py: {e}", file=sys.stderr)
        return 2
    if a.quick:
        a.params, a.points, a.repeats = [1500], [64], 1
        a.models = [m for m in a.models if m in ("siren", "lrnn-siren", "hash")] or a.models[:1]
    torch.set_num_threads(a.threads)
    rows = []
    for name in a.models:
        for budget in a.params:
            for pts in a.points:
                r = measure(name, budget, pts, a.repeats)
                rows.append(r)
                print(f"{name} {r['params']} {pts}: forward {r['forward_s']:.4f} s, reverse "
                      f"{r['reverse_s'] if r['reverse_s'] is None else round(r['reverse_s'], 4)} s",
                      file=sys.stderr, flush=True)
    md = table(rows)
    print(md)
    if run is not None:
        with run:
            run.write_text("table.md", md + "\n")
            run.write_json("metrics.json", {"rows": rows, "threads": a.threads, "repeats": a.repeats,
                                            "argv": sys.argv[1:] if argv is None else list(argv),
                                            "versions": versions()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
