"""Shared runner for the signal-fitting benchmarks (image_fit.py, audio_fit.py).

Every (model, signal, seed) run happens in its own subprocess, so peak RSS is that run's own and
one crashing run cannot take the study down.  Registry models go through ``inr.fitting.fit``
(the same code as ``inr fit``); the peer library ``siren-pytorch`` is trained by the same loop.

Time to target and success rates in the tables come from whole-signal evaluations every
``eval_every`` steps (default ``inr.fitting.EVAL_EVERY``), off the training clock -- never from the
training batches (those are in each run's metrics.json as ``time_to_target_batch``).
"""
from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

PEER = "siren-pytorch"
# the peer runs as its README documents: Adam 1e-4 on the full batch
PEER_LR, PEER_BATCH = 1e-4, None


def settings(model: str, kind: str) -> tuple:
    """(lr, CPU batch) for a study run: the peer's documented ones, else the family's spec for ``kind``."""
    if model == PEER:
        return PEER_LR, PEER_BATCH
    from inr.models import spec

    t = spec(model).task(kind)
    return t.lr, t.cpu_batch


def _set_threads(threads: int) -> None:
    import torch
    torch.set_num_threads(threads)


def run_peer(sig, seconds, steps, lr, batch, targets, seed, out: Path, eval_every: int | None = None) -> dict:
    """siren-pytorch as documented: SirenNet(dim_hidden=256, num_layers=5, w0_initial=30), trained by inr.train."""
    from siren_pytorch import SirenNet

    from inr import fitting as F
    from inr.train import TrainConfig, fit, seed_everything

    seed_everything(seed)
    net = SirenNet(dim_in=sig.coord_dim, dim_hidden=256, dim_out=sig.channels, num_layers=5, w0_initial=30.0)
    coords, values = sig.coords(), sig.targets()
    loss_fn = F.make_loss(net, coords, values, sig.kind, batch)
    key = "psnr" if sig.kind == "image" else "mse"
    cfg = TrainConfig(steps=steps, seconds=seconds, lr=lr, targets=tuple(targets), target_key=key,
                      target_mode="max" if key == "psnr" else "min", seed=seed, quiet=True, desc=PEER)
    saved = F.saved_tensor_bytes(loss_fn)
    eval_every = F.EVAL_EVERY if eval_every is None else eval_every
    res = fit(net, loss_fn, cfg, evaluate=F.make_evaluator(net, coords, values, sig.kind), eval_every=eval_every)
    pred = F.predict(net, coords, sig.kind)
    m = {"signal": sig.name, "model": PEER, "params": sum(p.numel() for p in net.parameters()),
         "steps": res.steps, "seconds": res.seconds, "seconds_per_step": res.seconds_per_step,
         **F.target_metrics(res, eval_every), "lr": lr, "batch": batch,
         "memory": {"saved_tensors_bytes": saved, "peak_rss_bytes": F.peak_rss_bytes()}, **F.signal_metrics(sig, pred)}
    out.mkdir(parents=True, exist_ok=True)
    res.write_history(out / "history.csv")
    (out / "metrics.json").write_text(json.dumps(m, indent=2, default=str))
    return m


def worker(spec: dict) -> dict:
    _set_threads(spec["threads"])
    from inr.fitting import fit
    sig = load_signal(spec["signal"])
    out = Path(spec["out"])
    if spec["model"] == PEER:
        return run_peer(sig, spec["seconds"], spec["steps"], spec["lr"], spec["batch"], spec["targets"],
                        spec["seed"], out, spec.get("eval_every"))
    f = fit(sig, model=spec["model"], params=spec["params"], steps=spec["steps"], seconds=spec["seconds"],
            lr=spec["lr"], batch=spec["batch"], targets=spec["targets"], seed=spec["seed"], quiet=True,
            device=spec.get("device", "cpu"), **(spec.get("model_options") or {}),
            **({"eval_every": spec["eval_every"]} if spec.get("eval_every") is not None else {}))
    f.save(out)
    return {**f.metrics, "run_dir": str(out)}


def load_signal(desc: dict):
    """Signals are described by JSON so a subprocess can rebuild them: {"builtin": name, ...} or {"path": ...}."""
    if "path" in desc:
        from inr.signals import load
        return load(desc["path"])
    if desc["builtin"] == "test_audio":
        from inr.signals import test_audio
        return test_audio(seconds=desc.get("seconds", 1.0), rate=desc.get("rate", 16000))
    from skimage import data
    from skimage.color import rgb2gray
    from skimage.transform import resize

    from inr.signals import image_from_array
    img = getattr(data, desc["builtin"])()
    if img.ndim == 3 and not desc.get("rgb"):   # gray unless {"rgb": true}
        img = rgb2gray(img[..., :3])
    img = img.astype(np.float64)
    img = img / (255.0 if img.max() > 1 else 1.0)
    h, w = img.shape[:2]
    s = min(h, w)  # centre square crop, then area-averaged resize
    img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
    size = desc.get("size", 256)
    img = np.clip(resize(img, (size, size), anti_aliasing=True), 0, 1)
    return image_from_array(img, source=None, builtin={"name": desc["builtin"], "size": size})


def run_all(specs: list[dict], out_dir: Path, quiet: bool = False) -> list[dict]:
    """Run every spec in its own subprocess; returns the metrics (failed runs get an 'error')."""
    results = []
    for i, spec in enumerate(specs):
        label = f"[{i + 1}/{len(specs)}] {spec['model']} on {spec['signal'].get('builtin', spec['signal'].get('path'))} seed {spec['seed']}"
        if not quiet:
            print(label, flush=True)
        t0 = time.time()
        proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                              env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]) + os.pathsep
                                   + os.environ.get("PYTHONPATH", "")})
        if proc.returncode != 0:
            err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
            print(f"    FAILED: {err}", file=sys.stderr)
            results.append({**spec, "error": err})
            continue
        m = json.loads(proc.stdout.strip().splitlines()[-1])
        m["wall_total"] = time.time() - t0
        m["run_dir"] = os.path.relpath(spec["out"], out_dir)   # relative: the study folder is renamed at the end
        m["seed"] = spec["seed"]
        results.append(m)
        if not quiet:
            key = "psnr" if "psnr" in m else "mse"
            print(f"    {key} {m.get(key):.4g}  steps {m['steps']}  s/step {m['seconds_per_step']:.3f}", flush=True)
    (out_dir / "runs.json").write_text(json.dumps(results, indent=2, default=str))
    return results


def _median(xs):
    xs = [x for x in xs if x is not None and math.isfinite(x)]
    return statistics.median(xs) if xs else None


def summarise(results: list[dict], targets, kind: str) -> list[dict]:
    rows = []
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in results if r["model"] == model and "error" not in r]
        failed = sum(1 for r in results if r["model"] == model and "error" in r)
        if not rs:
            rows.append({"model": model, "runs": 0, "failed": failed})
            continue
        row = {"model": model, "runs": len(rs), "failed": failed, "params": rs[0]["params"]}
        if kind == "image":
            row["psnr"] = statistics.mean(r["psnr"] for r in rs)
            row["ssim"] = statistics.mean(r["ssim"] for r in rs if r.get("ssim") is not None)
        else:
            row["mse_1e4"] = statistics.mean(r["mse"] for r in rs) * 1e4
            row["rho_ag"] = statistics.mean(r["rho_ag"] for r in rs)
        for t in targets:  # whole-signal evaluations only (metrics["time_to_target"], module docstring)
            hits = [r["time_to_target"].get(str(float(t))) for r in rs]
            row[f"success_{t}"] = sum(h is not None for h in hits) / len(rs)
            row[f"median_s_to_{t}"] = _median([h["seconds"] for h in hits if h])
        row["s_per_step"] = _median([r["seconds_per_step"] for r in rs])
        row["eval_s"] = _median([r.get("eval_seconds") for r in rs])
        row["steps"] = _median([r["steps"] for r in rs])
        row["saved_MB"] = _median([r["memory"]["saved_tensors_bytes"] / 2**20 for r in rs])
        row["peak_rss_MB"] = _median([r["memory"]["peak_rss_bytes"] / 2**20 for r in rs])
        rows.append(row)
    return rows


def markdown_table(rows: list[dict]) -> str:
    keys = list(dict.fromkeys(k for r in rows for k in r))
    fmt = lambda v: "-" if v is None else (f"{v:.4g}" if isinstance(v, float) else str(v))
    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    lines += ["| " + " | ".join(fmt(r.get(k)) for k in keys) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def report(specs: list[dict], targets, kind: str, header: str, out: Path, settings: dict, plot_name: str) -> None:
    """Run the specs, then write table.md, metrics.json and the curve plot of one study into ``out``."""
    results = run_all(specs, out)
    rows = summarise(results, targets, kind)
    table = markdown_table(rows)
    (out / "table.md").write_text(header + table)
    (out / "metrics.json").write_text(json.dumps({"summary": rows, "runs": results, "settings": settings},
                                                 indent=2, default=str))
    plot_curves(results, out, kind, out / plot_name)
    print(header + table)


def plot_curves(results: list[dict], out_dir: Path, kind: str, path: Path) -> None:
    """Whole-signal PSNR (or MSE) vs training seconds (the evaluations of history.csv), one line per
    run, one colour per model."""
    import csv

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = "eval_psnr" if kind == "image" else "eval_mse"
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = {}
    for r in results:
        if "error" in r:
            continue
        hist = Path(out_dir) / r["run_dir"] / "history.csv"
        if not hist.exists():
            continue
        with open(hist) as f:
            rows = [row for row in csv.DictReader(f) if row.get(key)]
        if not rows:
            continue
        c = colours.setdefault(r["model"], f"C{len(colours)}")
        ax.plot([float(x["seconds"]) for x in rows], [float(x[key]) for x in rows], color=c, lw=0.8, alpha=0.7,
                label=r["model"] if r["model"] not in ax.get_legend_handles_labels()[1] else None)
    ax.set_xlabel("wall seconds (training only)")
    ax.set_ylabel("whole-image PSNR (dB)" if kind == "image" else "whole-signal MSE")
    if kind != "image":
        ax.set_yscale("log")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


if __name__ == "__main__" and len(sys.argv) == 3 and sys.argv[1] == "--worker":
    spec = json.loads(sys.argv[2])
    m = worker(spec)
    m["run_dir"] = spec["out"]
    print(json.dumps(m, default=str))
