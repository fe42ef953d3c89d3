"""Cost of one training step for N signals: one model after another vs the batched engines.

    python benchmarks/batched_step.py                              # 16 x 64x64 points, SIREN, 2k..200k params
    python benchmarks/batched_step.py --model lrnn-spder --params 20000,200000
    python benchmarks/batched_step.py --quick

Isolates the part of batched fitting that batching could speed up: one Adam step (forward, backward,
update) of N same-shape models on N signals of P points each, timed as
- `sequential`: each model with its own optimizer, one after another (what N separate fits do per step);
- `stacked`: `inr.batched.StackedINR` (vmap over stacked weights; LRNN as one wide fused layer), one optimizer;
- `loop`: `inr.batched.LoopINR` with per-model backward (the CPU default of `inr fit FOLDER/`).
The engines are interleaved and the median over repeats is reported, so the ratios hold on a shared
machine.  A ratio well above 1 needs per-step overhead that batching removes; where the step is
compute-bound (dense products and activations scale with N either way) it stays near 1.
Writes results/batched_step/{table.md, metrics.json}.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from inr.batched import LoopINR, StackedINR  # noqa: E402
from inr.models import MODELS, build, count_params  # noqa: E402
from inr.runs import RunFolder, check_out  # noqa: E402


def engines(model: str, params: int, n: int, x: torch.Tensor, Y: torch.Tensor, lr: float = 1e-4) -> dict:
    """name -> a callable doing one training step of all n models."""
    torch.manual_seed(0)
    nets = [build(model, 2, 1, params=params) for _ in range(n)]
    opts = [torch.optim.Adam(m.parameters(), lr) for m in nets]

    def sequential():
        for m, o, y in zip(nets, opts, Y):
            o.zero_grad()
            torch.mean((m(x) - y) ** 2).backward()
            o.step()

    stacked = StackedINR([build(model, 2, 1, params=params) for _ in range(n)])
    o_st = torch.optim.Adam(stacked.parameters(), lr)

    def stacked_step():
        o_st.zero_grad()
        torch.mean((stacked(x) - Y) ** 2, dim=(1, 2)).sum().backward()
        o_st.step()

    loop = LoopINR([build(model, 2, 1, params=params) for _ in range(n)])
    o_lp = torch.optim.Adam(loop.parameters(), lr)

    def loop_step():
        o_lp.zero_grad()
        for m, y in zip(loop.nets, Y):     # per-model backward, as fit_group's loop engine does
            torch.mean((m(x) - y) ** 2).backward()
        o_lp.step()

    return {"sequential": sequential, "stacked": stacked_step, "loop": loop_step,
            "_params": count_params(nets[0])}


def measure(model: str, params: int, n: int, points: int, repeats: int) -> dict:
    g = torch.Generator().manual_seed(0)
    x = torch.rand(points, 2, generator=g) * 2 - 1
    Y = torch.rand(n, points, 1, generator=g)
    fns = engines(model, params, n, x, Y)
    actual = fns.pop("_params")
    times = {k: [] for k in fns}
    for rep in range(repeats + 1):        # round 0 is warm-up
        for k, f in fns.items():
            t0 = time.perf_counter()
            f()
            if rep:
                times[k].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"model": model, "params": actual, "signals": n, "points": points, "repeats": repeats,
            "ms_per_step": {k: round(1e3 * v, 2) for k, v in med.items()},
            "speedup_vs_sequential": {k: round(med["sequential"] / v, 3) for k, v in med.items()}}


def table(rows: list, meta: dict) -> str:
    lines = ["# One training step of N models: sequential vs batched engines", "",
             f"Command: `python benchmarks/batched_step.py {' '.join(meta['argv'])}`.  {meta['machine']}.", "",
             "| model | params / model | N x points | sequential ms | stacked ms (x) | loop ms (x) |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        t, s = r["ms_per_step"], r["speedup_vs_sequential"]
        lines.append(f"| {r['model']} | {r['params']} | {r['signals']} x {r['points']} | {t['sequential']:.1f} | "
                     f"{t['stacked']:.1f} ({s['stacked']:.2f}x) | {t['loop']:.1f} ({s['loop']:.2f}x) |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="siren", choices=MODELS)
    p.add_argument("--params", default="2000,10000,50000,200000", help="comma-separated budgets per model")
    p.add_argument("--signals", type=int, default=16)
    p.add_argument("--points", type=int, default=4096, help="points per signal per step (64x64 = 4096)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="results/batched_step")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    check_out(a.out)   # before any work: an earlier result is never overwritten
    if a.quick:
        a.params, a.signals, a.points, a.repeats = "500", 3, 64, 1
    try:
        budgets = [int(v) for v in a.params.split(",")]
    except ValueError:
        p.error(f"--params takes comma-separated integers, got {a.params!r}")
    if min(budgets + [a.signals, a.points, a.repeats, a.threads]) < 1:
        p.error("--params, --signals, --points, --repeats and --threads must be >= 1")
    torch.set_num_threads(a.threads)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    meta = {"argv": sys.argv[1:] if argv is None else list(argv),
            "machine": f"{os.cpu_count()} CPU cores, load average {load:.1f} at start, {a.threads} torch thread(s), "
                       f"torch {torch.__version__}"}
    rows = []
    with RunFolder(a.out) as run:   # built under a hidden name, renamed when complete
        for b in budgets:
            rows.append(measure(a.model, b, a.signals, a.points, a.repeats))
            print(json.dumps(rows[-1]), flush=True)
            run.write_json("metrics.json", {**meta, "rows": rows})
            run.write_text("table.md", table(rows, meta))
    print(table(rows, meta))
    return 0


if __name__ == "__main__":
    sys.exit(main())
