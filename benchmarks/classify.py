"""Classification study: (a) accuracy on the bundled digits set (every model family, a few epochs),
(b) training throughput (images/s) and memory for every model at CIFAR (32x32) and ImageNet
(224x224) shapes, on CUDA when there is one, else CPU (few iterations).

    python benchmarks/classify.py                 # moderate setting (CPU: tens of minutes on 2 cores)
    python benchmarks/classify.py --quick         # tiny setting (the test)
    python benchmarks/classify.py --device cuda --amp bf16 --channels-last on   # the GPU throughput target

Writes results/classify/{metrics.json, table.md, digits.png}.  Memory: on CUDA the peak allocated by a
training step (torch.cuda.max_memory_allocated); on every device the bytes the autograd graph saves for
backward (activations, counted with saved_tensors_hooks), which is what grows with batch and resolution.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from classify import models as M  # noqa: E402
from classify.train import TrainArgs, train  # noqa: E402

# (a) digits: name, extra model arguments, label
DIGITS = [("resnet20", {}, "ResNet20"), ("pure20", {}, "PURe20"), ("qresnet20", {}, "QResNet20"),
          ("newton-resnet", {"base_width": 16, "blocks": [1, 1, 1, 1]}, "Newton-ResNet [1,1,1,1] w16"),
          ("resnet18", {}, "ResNet18"), ("pure18", {}, "PURe18")]
IMAGENET_MODELS = ("resnet18", "resnet34", "pure18", "pure34")


def _atomic_write(path, text):
    with open(path + ".tmp", "w") as f:
        f.write(text)
    os.replace(path + ".tmp", path)


def run_digits(a, out):
    rows = []
    for name, kw, label in DIGITS:
        if a.quick:
            kw = {**kw, "base_width": 4 if name not in ("resnet18", "pure18", "newton-resnet") else 8}
        for seed in a.seeds:
            run_dir = os.path.join(out, "runs", f"{name}-s{seed}")
            res = train(TrainArgs(model=name, data="digits", model_args=kw, epochs=a.epochs, batch_size=a.batch_size,
                                  seed=seed, device=a.device, threads=a.threads, quiet=True, out=run_dir,
                                  noise_peak=a.noise_peak, limit_train=128 if a.quick else None,
                                  image_size=16 if a.quick else None, targets=(0.9,)))
            rows.append({"model": name, "label": label, "seed": seed, "params": res["params"],
                         "test_acc": res["final_test_acc"], "best_test_acc": res["best_test_acc"],
                         "train_seconds": res["train_seconds"], "time_to_0.9_s": res["time_to_target_s"][0.9],
                         "acc_noisy": res["noise"]["acc_noisy"], "delta_noise_percent": res["noise"]["delta_noise_percent"],
                         "curve": [h["test_acc"] for h in res["history"]]})
            print(f"digits {label:28s} seed {seed}: acc {res['final_test_acc']:.4f}  {res['train_seconds']:.1f}s",
                  file=sys.stderr)
    return rows


def _mean_std(v):
    return (statistics.mean(v), statistics.stdev(v) if len(v) > 1 else 0.0)


def measure(name, kw, res, batch, iters, warmup, device, amp, channels_last, compile_):
    """Median images/s over ``iters`` SGD steps (after ``warmup``), CUDA peak memory, saved-activation MB."""
    torch.manual_seed(0)
    model = M.build(name, 10, 3, **kw).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    net = torch.compile(model) if compile_ else model
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, res, res, device=device)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    ac = torch.autocast(device.type, dtype=torch.bfloat16, enabled=amp)

    def step():
        with ac:
            loss = F.cross_entropy(net(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    for _ in range(warmup):
        step()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for _ in range(iters):
        sync()
        t = time.perf_counter()
        step()
        sync()
        times.append(time.perf_counter() - t)
    saved = [0]

    def pack(t):
        saved[0] += t.numel() * t.element_size()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t), ac:
        F.cross_entropy(model(x).float(), y).backward()
    out = {"model": name, "args": kw, "resolution": res, "batch": batch, "params": M.count_params(model),
           "images_per_s": batch / statistics.median(times), "step_ms_median": 1e3 * statistics.median(times),
           "saved_activations_mb": saved[0] / 2**20}
    if device.type == "cuda":
        out["peak_memory_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return out


def run_throughput(a, device, amp, channels_last):
    rows = []
    names = a.throughput_models or list(M.MODELS)
    for name in names:
        shapes = [32] + ([224] if name in IMAGENET_MODELS else [])
        for res in shapes:
            kw = {"base_width": 4} if a.quick else {}
            batch = (a.batch_imagenet if res == 224 else a.batch_cifar)
            r = measure(name, kw, 64 if (a.quick and res == 224) else res, batch, a.iters, a.warmup, device, amp,
                        channels_last, a.compile)
            rows.append(r)
            print(f"throughput {name:14s} {r['resolution']:>3d}px b{batch}: {r['images_per_s']:.1f} img/s",
                  file=sys.stderr)
    return rows


def table(meta, digits, thr) -> str:
    lines = [f"# Classification study\n", f"Machine: {meta['machine']}; device {meta['device']}; "
             f"torch {meta['torch']}; command: `{meta['command']}`\n"]
    if digits:
        lines += [f"## Digits (sklearn 8x8 -> 32x32, 1438 train / 359 test), {meta['epochs']} epochs, seeds "
                  f"{meta['seeds']}, paper optimiser defaults, batch {meta['batch_size']}\n",
                  "| model | params | test acc (mean ± sd) | train s (mean) | acc under Poisson noise (peak "
                  f"{meta['noise_peak']:g}) | Δnoise % |", "|---|---:|---:|---:|---:|---:|"]
        for label in dict.fromkeys(r["label"] for r in digits):
            rs = [r for r in digits if r["label"] == label]
            acc, sd = _mean_std([r["test_acc"] for r in rs])
            nz, _ = _mean_std([r["acc_noisy"] for r in rs])
            dn, _ = _mean_std([r["delta_noise_percent"] for r in rs])
            ts, _ = _mean_std([r["train_seconds"] for r in rs])
            lines.append(f"| {label} | {rs[0]['params']:,} | {acc:.4f} ± {sd:.4f} | {ts:.1f} | {nz:.4f} | {dn:.2f} |")
    if thr:
        lines += ["", f"## Training throughput ({meta['device']}, amp bf16={meta['amp']}, channels_last="
                  f"{meta['channels_last']}, median of {meta['iters']} steps)\n",
                  "| model | input | batch | params | images/s | step ms | saved activations MB | CUDA peak MB |",
                  "|---|---:|---:|---:|---:|---:|---:|---:|"]
        for r in thr:
            peak = f"{r['peak_memory_mb']:.0f}" if "peak_memory_mb" in r else "-"
            lines.append(f"| {r['model']} | {r['resolution']}² | {r['batch']} | {r['params']:,} | "
                         f"{r['images_per_s']:.1f} | {r['step_ms_median']:.1f} | {r['saved_activations_mb']:.1f} | {peak} |")
        by = {(r["model"], r["resolution"]): r for r in thr}
        pairs = [("pure20", "resnet20", 32), ("pure18", "resnet18", 224), ("pure18", "resnet18", 32),
                 ("qresnet20", "resnet20", 32)]
        ratios = [f"- {p}/{b} at {s}²: step time ratio {by[(b, s)]['images_per_s'] / by[(p, s)]['images_per_s']:.2f}"
                  for p, b, s in pairs if (p, s) in by and (b, s) in by]
        if ratios:
            lines += ["", "Step-time ratios (same run; target for PURe20/ResNet20 in bf16 on a GPU: <= 1.3):", *ratios]
    return "\n".join(lines) + "\n"


def plot(digits, path):
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, ax = plt.subplots(figsize=(6, 4))
    for label in dict.fromkeys(r["label"] for r in digits):
        curves = [r["curve"] for r in digits if r["label"] == label]
        mean = [statistics.mean(c[i] for c in curves) for i in range(len(curves[0]))]
        ax.plot(range(1, len(mean) + 1), mean, marker="o", label=label)
    ax.set_xlabel("epoch"), ax.set_ylabel("test accuracy (digits)"), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path + ".tmp.png", dpi=100)
    plt.close(fig)
    os.replace(path + ".tmp.png", path)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny setting for the test (seconds)")
    p.add_argument("--out", default="results/classify")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda")
    p.add_argument("--epochs", type=int, default=None, help="digits epochs (default 8; quick 1)")
    p.add_argument("--seeds", default=None, help="digits seeds, comma-separated (default 0,1,2; quick 0)")
    p.add_argument("--batch-size", type=int, default=64, help="digits batch size")
    p.add_argument("--noise-peak", type=float, default=10.0, help="Poisson peak of the noisy digits test set")
    p.add_argument("--skip-digits", action="store_true")
    p.add_argument("--skip-throughput", action="store_true")
    p.add_argument("--throughput-models", default=None, help="comma-separated subset (default: every model)")
    p.add_argument("--batch-cifar", type=int, default=None, help="32x32 batch (default GPU 128, CPU 16)")
    p.add_argument("--batch-imagenet", type=int, default=None, help="224x224 batch (default GPU 64, CPU 4)")
    p.add_argument("--iters", type=int, default=None, help="timed steps (default GPU 20, CPU 3)")
    p.add_argument("--warmup", type=int, default=None, help="untimed steps first (default GPU 5, CPU 1)")
    p.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    p.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto")
    p.add_argument("--compile", action="store_true")
    p.add_argument("--threads", type=int, default=1, help="CPU threads (default 1)")
    a = p.parse_args(argv)
    from inr.train import resolve_device
    try:
        device = resolve_device(a.device)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    torch.set_num_threads(a.threads)
    gpu = device.type == "cuda"
    a.epochs = a.epochs or (1 if a.quick else 8)
    a.seeds = [int(s) for s in (a.seeds or ("0" if a.quick else "0,1,2")).split(",")]
    a.batch_cifar = a.batch_cifar or (128 if gpu else (4 if a.quick else 16))
    a.batch_imagenet = a.batch_imagenet or (64 if gpu else (2 if a.quick else 4))
    a.iters = a.iters or (20 if gpu else (1 if a.quick else 3))
    a.warmup = a.warmup if a.warmup is not None else (5 if gpu else 1)
    a.throughput_models = a.throughput_models.split(",") if a.throughput_models else (
        ["resnet20", "pure20", "qresnet20", "newton-resnet", "resnet18", "pure18"] if a.quick else None)
    for n in a.throughput_models or []:
        if n not in M.MODELS:
            print(f"error: --throughput-models: unknown model {n!r}", file=sys.stderr)
            return 2
    amp = a.amp == "bf16" or (a.amp == "auto" and gpu)
    channels_last = a.channels_last == "on" or (a.channels_last == "auto" and gpu)
    from inr.runs import RunFolder
    run = RunFolder(a.out)   # refused now if it exists; built under a hidden name, renamed when complete
    meta = {"machine": f"{platform.node()} ({os.cpu_count()} CPUs, shared with other jobs)" if not gpu else
            torch.cuda.get_device_name(device), "device": str(device), "torch": torch.__version__,
            "command": "python benchmarks/classify.py " + " ".join(argv if argv is not None else sys.argv[1:]),
            "epochs": a.epochs, "seeds": a.seeds, "batch_size": a.batch_size, "noise_peak": a.noise_peak,
            "amp": amp, "channels_last": channels_last, "iters": a.iters, "quick": a.quick}
    with run:
        out = str(run.path)
        digits = [] if a.skip_digits else run_digits(a, out)
        thr = [] if a.skip_throughput else run_throughput(a, device, amp, channels_last)
        metrics = {"meta": meta, "digits": digits, "throughput": thr}
        _atomic_write(os.path.join(out, "metrics.json"), json.dumps(metrics, indent=2))
        _atomic_write(os.path.join(out, "table.md"), table(meta, digits, thr))
        if digits:
            plot(digits, os.path.join(out, "digits.png"))
    print(table(meta, digits, thr))
    return 0


if __name__ == "__main__":
    sys.exit(main())
