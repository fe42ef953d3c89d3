"""LRNN training cost vs SIREN/SPDER: seconds per Adam step and activation memory at the same batch.

    python benchmarks/lrnn_cost.py                 # 256x256-image-sized batches, ~200k-parameter models
    python benchmarks/lrnn_cost.py --batch 65536 --repeats 5
    python benchmarks/lrnn_cost.py --quick

Rows: SIREN, SPDER, the default LRNN-SPDER (harmonic components, K = 4, depth 3) with its default kernel
(`auto`: the C++ kernel of inr/layers/lrnn_cpp.py where it builds, as `inr fit` uses), with the
torch.compile'd kernels, with the eager fused kernel and on plain autograd;
the poster's configuration (MLP components m = 4, depth 2) fused, plain, with bf16 hidden projections and
compiled; and the naive configuration (r=128, dbar=8, m=8) fused and plain.
Steps of all models are interleaved and the median over repeats is reported, so the ratios hold on a
shared machine.  Memory = bytes of the tensors autograd saves for backward in one step (deduplicated by
storage), which is what differs between the models; parameters and optimizer state are ~2.4 MB for all.
Writes results/lrnn_cost/table.md and metrics.json.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing
from inr.fitting import saved_tensor_bytes  # noqa: E402
from inr.layers import lrnn_cpp  # noqa: E402
from inr.models import build, count_params  # noqa: E402
from inr.runs import RunFolder, check_out  # noqa: E402


def saved_bytes(model, x, y) -> int:
    return saved_tensor_bytes(lambda step: ((model(x) - y) ** 2).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--batch", type=int, default=16384)
    p.add_argument("--params", type=int, default=200_000)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--no-naive", action="store_true", help="skip the r=128, dbar=8, m=8 rows")
    p.add_argument("--no-compiled", action="store_true",
                   help="skip the torch.compile'd LRNN kernel row (its first step compiles, ~10-30 s)")
    p.add_argument("--core", action="store_true",
                   help="only SIREN, SPDER and the default LRNN-SPDER (plus the compiled row unless --no-compiled)")
    p.add_argument("--out", default="results/lrnn_cost")
    p.add_argument("--quick", action="store_true")
    a = p.parse_args(argv)
    check_out(a.out)   # before any work: an earlier result is never overwritten
    if a.quick:
        a.batch, a.params, a.repeats, a.no_naive = 256, 5000, 2, True
    torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x, y = torch.rand(a.batch, 2) * 2 - 1, torch.rand(a.batch, 1)
    paper = dict(component="mlp", width=4, band="component", head_init="default", depth=2)
    default_kernel = "cpp" if lrnn_cpp.available() else "fused"   # what kernel="auto" runs on the CPU
    models = {
        "siren": build("siren", 2, 1, params=a.params),
        "spder": build("spder", 2, 1, params=a.params),
        f"lrnn-spder (default: harmonic K=4, {default_kernel} kernel)": build("lrnn-spder", 2, 1, params=a.params),
    }
    if not a.no_compiled:   # the torch.compile'd kernels (Triton on CUDA; the first step compiles)
        models["lrnn-spder (harmonic K=4, compiled)"] = build("lrnn-spder", 2, 1, params=a.params, kernel="compiled")
    if not a.core:
        models.update({
            "lrnn-spder (harmonic K=4, fused eager)": build("lrnn-spder", 2, 1, params=a.params, kernel="fused"),
            "lrnn-spder (harmonic K=4, plain autograd)": build("lrnn-spder", 2, 1, params=a.params,
                                                               memory_efficient=False),
            "lrnn-spder (paper MLP m=4, depth 2, fused)": build("lrnn-spder", 2, 1, params=a.params, **paper),
            "lrnn-spder (paper MLP, plain autograd)": build("lrnn-spder", 2, 1, params=a.params,
                                                            memory_efficient=False, **paper),
            "lrnn-spder (paper MLP, bf16 hidden projections)": build("lrnn-spder", 2, 1, params=a.params,
                                                                     precision="bf16", **paper),
        })
    if not a.no_compiled and not a.core:
        models["lrnn-spder (paper MLP, compiled kernel)"] = build("lrnn-spder", 2, 1, params=a.params,
                                                                  kernel="compiled", **paper)
    if not a.no_naive and not a.core:
        models["lrnn-spder r128 d8 m8 (fused)"] = build("lrnn-spder", 2, 1, rank=128, dbar=8, width=8, **paper)
        models["lrnn-spder r128 d8 m8 (plain autograd)"] = build("lrnn-spder", 2, 1, rank=128, dbar=8, width=8,
                                                                 memory_efficient=False, **paper)
    opts = {k: torch.optim.Adam(m.parameters(), 1e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    for rep in range(a.repeats + 1):  # the first round is warm-up
        for k, m in models.items():
            t0 = time.perf_counter()
            opts[k].zero_grad()
            ((m(x) - y) ** 2).mean().backward()
            opts[k].step()
            if rep:
                times[k].append(time.perf_counter() - t0)
        print(f"round {rep}/{a.repeats}", file=sys.stderr, flush=True)
    base_t = statistics.median(times["siren"])
    base_m = saved_bytes(models["siren"], x, y)
    rows = []
    for k, m in models.items():
        t, mem = statistics.median(times[k]), saved_bytes(m, x, y)
        rows.append({"model": k, "params": count_params(m), "s_per_step": t, "x_siren_time": t / base_t,
                     "saved_MB": mem / 2**20, "x_siren_memory": mem / base_m})
    load = " ".join(Path("/proc/loadavg").read_text().split()[:3]) if Path("/proc/loadavg").exists() else "n/a"
    lines = [f"batch {a.batch}, {a.threads} threads, median of {a.repeats} interleaved steps "
             f"(load average before the table: {load})\n",
             "| model | params | s/step | x SIREN time | saved MB | x SIREN memory |", "|---|---|---|---|---|---|"]
    lines += [f"| {r['model']} | {r['params']} | {r['s_per_step']:.3f} | {r['x_siren_time']:.2f} | "
              f"{r['saved_MB']:.0f} | {r['x_siren_memory']:.2f} |" for r in rows]
    with RunFolder(a.out) as run:   # built under a hidden name, renamed when complete
        run.write_text("table.md", "\n".join(lines) + "\n")
        run.write_json("metrics.json", {"rows": rows, "settings": vars(a)})
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
