"""The LRNN paper's protocols in one run, sized for one GPU (within 10 minutes on an H100: --budget seconds of
runs, 480 by default, plus compiles), writing one table.

    python benchmarks/gpu_protocols.py                       # CUDA when present (the intended use)
    python benchmarks/gpu_protocols.py --quick --threads 1   # tiny CPU check (~1 minute; the test)

Sections (rows of the one table; run as kernel, classify, audio, ct, so the budget-driven fits come last):

1. audio: LRNN-SPDER vs SIREN fitting 1 s clips in full batch, Adam with cosine decay to
   0.1x, --audio-steps steps each (default 5000: the paper does not print its audio step count; this is
   the count of its CT protocol), `inr fit`'s audio settings (w0, band, lr).  Clips: the generated test clip
   (inr.signals.test_audio, 16 kHz), 1 s of benchmarks/data/speech.wav (espeak-ng, 44.1 kHz) and 1 s of the
   synthesised music of benchmarks/lrnn_study.py (44.1 kHz).  Metric: whole-clip MSE on the [-1, 1] scale
   (x 1e-4, the paper's Table 1 unit).
2. ct: sparse-view CT at 100 views of the 256 x 256 analytic thorax (tomography.phantoms), 5000 Adam steps
   per model (tomography.recon.reconstruct_inr defaults: lr per model, decay to 0.1x), ~180k parameters,
   LRNN-SIREN, SIREN and the hash grid; PSNR / SSIM of the final iterate (data range 1).
3. classify: PURe20 vs ResNet20 training throughput (images/s, SGD steps at batch 256 on 32 x 32 inputs,
   bf16 autocast on CUDA, fp32 on the CPU), median over steps after warm-up.
4. kernel: seconds per Adam step of the default LRNN-SPDER (~200k parameters) with the compiled kernels
   (Inductor: Triton on CUDA; the repo has no hand-written Triton kernel), its default kernel (`auto`) and
   the eager fused kernel, against SIREN at the same batch (65,536 points on CUDA).

Each section checks the remaining --budget before each run and records "skipped (budget)" instead of
overrunning; a section or kernel that raises is recorded as "skipped (error: ...)" and the rest still run.
Every CUDA path is guarded by the device (bf16 only where supported; timings synchronise).
Writes a new folder (--out, default results/gpu_protocols; an existing one is refused before any work):
table.md and metrics.json (inr.runs.RunFolder).
"""
from __future__ import annotations

import argparse
import math
import platform
import statistics
import sys
import time
import traceback
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # run from a checkout without installing
from classify import models as classify_models  # noqa: E402  (before benchmarks/ is on sys.path: classify.py)
from inr.layers.lrnn import resolve_kernel  # noqa: E402
from inr.metrics import psnr, ssim  # noqa: E402
from inr.models import ModelConfig, build, count_params, spec  # noqa: E402
from inr.runfiles import versions  # noqa: E402
from inr.runs import RunFolder, check_out  # noqa: E402
from inr.signals import audio_from_array, load, test_audio  # noqa: E402
from inr.train import resolve_device, seed_everything  # noqa: E402

AUDIO_MODELS = ("siren", "lrnn-spder")
CT_MODELS = ("lrnn-siren", "siren", "hash")
CLASSIFY_MODELS = ("resnet20", "pure20")


class Budget:
    """Wall-clock budget for the whole script; each run asks before it starts."""

    def __init__(self, seconds: float):
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()


def _sync(device: torch.device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# 1. audio


def music_clip(seconds: float, rate: int) -> np.ndarray:
    """The synthesised music of benchmarks/lrnn_study.py (imported from there, one definition)."""
    saved = list(sys.path)
    sys.path.insert(0, str(HERE))
    try:
        from lrnn_study import music_clip as clip
    finally:
        sys.path[:] = saved
    return clip(seconds, rate)


def audio_clips(seconds: float, quick: bool) -> dict:
    """name -> peak-normalised mono float64 samples in [-1, 1]."""
    if quick:
        rate = 8000
        return {"test_audio": test_audio(seconds, rate).values[:, 0], "music": music_clip(seconds, rate)}
    clips = {"test_audio": test_audio(seconds, 16000).values[:, 0]}
    speech = HERE / "data" / "speech.wav"
    if speech.is_file():
        sig = load(speech)
        clips["speech"] = audio_from_array(sig.values[: int(round(seconds * sig.rate)), :1], sig.rate).values[:, 0]
    clips["music"] = music_clip(seconds, 44100)
    return clips


def fit_audio(model: str, samples: np.ndarray, steps: int, params: int, device, seconds_cap: float) -> dict:
    """Full-batch Adam (cosine decay to 0.1x) with `inr fit`'s audio defaults; whole-clip MSE at the end."""
    seed_everything(0)
    net = ModelConfig(model, params).build(1, 1, "audio", device=device)
    lr = spec(model).task("audio").lr
    n = len(samples)
    x = torch.linspace(-1, 1, n, device=device).unsqueeze(1)
    y = torch.as_tensor(samples, dtype=torch.float32, device=device).unsqueeze(1)
    opt = torch.optim.Adam(net.parameters(), lr)
    cosine = lambda s: 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(s / steps, 1)))   # to 0.1x at the end
    sched = torch.optim.lr_scheduler.LambdaLR(opt, cosine)
    _sync(device)
    t0 = time.perf_counter()
    done = 0
    for done in range(1, steps + 1):
        loss = torch.mean((net(x) - y) ** 2)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if done % 50 == 0:
            _sync(device)
            if time.perf_counter() - t0 > seconds_cap:
                break
    _sync(device)
    secs = time.perf_counter() - t0
    with torch.no_grad():
        mse = float(torch.mean((net(x) - y) ** 2))
    return {"model": model, "params": count_params(net), "lr": lr, "steps": done, "seconds": secs,
            "s_per_step": secs / max(done, 1), "mse": mse, "finite": math.isfinite(mse)}


def section_audio(a, device, budget: Budget) -> list[dict]:
    rows = []
    clips = audio_clips(a.audio_seconds, a.quick)
    runs = [(c, m) for c in clips for m in AUDIO_MODELS]
    for i, (clip, model) in enumerate(runs):
        share = budget.left() * a.audio_share / max(len(runs) - i, 1)   # what is left, split over the rest
        if share < 1.0:
            rows.append({"section": "audio", "item": f"{clip} / {model}", "skipped": "budget"})
            continue
        r = fit_audio(model, clips[clip], a.audio_steps, a.params, device, share)
        rows.append({"section": "audio", "item": f"{clip} / {model}", "metric": "MSE x 1e-4",
                     "value": r["mse"] * 1e4, **r, "samples": len(clips[clip]), "steps_asked": a.audio_steps})
        print(f"audio {clip:10s} {model:11s} MSE {r['mse']:.3e} in {r['steps']} steps, {r['seconds']:.1f} s",
              file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# 2. CT


def section_ct(a, device, budget: Budget) -> list[dict]:
    from tomography.phantoms import thorax
    from tomography.config import CTConfig
    from tomography.recon import reconstruct_inr, simulate

    truth = thorax((a.ct_size, a.ct_size))
    scan = simulate(truth, views=a.ct_views, circle=True)
    rows = []
    for i, model in enumerate(CT_MODELS):
        share = budget.left() * a.ct_share / max(len(CT_MODELS) - i, 1)
        if share < 1.0:
            rows.append({"section": "ct", "item": model, "skipped": "budget"})
            continue
        image, res, net = reconstruct_inr(scan, CTConfig(model=model, params=a.ct_params, steps=a.ct_steps,
                                                         seconds=share, device=str(device), quiet=True))
        p, s = psnr(image, scan.truth), ssim(np.clip(image, 0, 1), scan.truth)
        rows.append({"section": "ct", "item": model, "metric": "PSNR dB / SSIM", "value": p, "ssim": s,
                     "steps": res.steps, "seconds": res.seconds, "s_per_step": res.seconds / max(res.steps, 1),
                     "params": count_params(net), "views": a.ct_views, "size": a.ct_size, "steps_asked": a.ct_steps})
        print(f"ct {model:11s} PSNR {p:.2f} SSIM {s:.4f} in {res.steps} steps, {res.seconds:.1f} s",
              file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# 3. classification throughput


def images_per_second(name: str, batch: int, iters: int, device, bf16: bool) -> dict:
    import torch.nn.functional as F

    M = classify_models
    torch.manual_seed(0)
    model = M.build(name, 10, 3).to(device)
    if device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    x = torch.randn(batch, 3, 32, 32, device=device)
    if device.type == "cuda":
        x = x.contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (batch,), device=device)
    ac = torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16)

    def step():
        with ac:
            loss = F.cross_entropy(model(x).float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(max(2, iters // 5)):
        step()
    times = []
    for _ in range(iters):
        _sync(device)
        t = time.perf_counter()
        step()
        _sync(device)
        times.append(time.perf_counter() - t)
    return {"images_per_s": batch / statistics.median(times), "step_ms": 1e3 * statistics.median(times),
            "params": M.count_params(model)}


def section_classify(a, device, budget: Budget) -> list[dict]:
    bf16 = device.type == "cuda" and torch.cuda.is_bf16_supported()
    rows = []
    for name in CLASSIFY_MODELS:
        if budget.left() < 5:
            rows.append({"section": "classify", "item": name, "skipped": "budget"})
            continue
        r = images_per_second(name, a.cls_batch, a.cls_iters, device, bf16)
        rows.append({"section": "classify", "item": name, "metric": "images/s", "value": r["images_per_s"],
                     "precision": "bf16" if bf16 else "fp32", "batch": a.cls_batch, **r})
        print(f"classify {name:9s} {r['images_per_s']:.0f} images/s", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------
# 4. LRNN kernels vs SIREN


def section_kernel(a, device, budget: Budget) -> list[dict]:
    torch.manual_seed(0)
    x = torch.rand(a.kernel_batch, 2, device=device) * 2 - 1
    y = torch.rand(a.kernel_batch, 1, device=device)
    specs = {"siren": ("siren", {}), "lrnn-spder (compiled)": ("lrnn-spder", {"kernel": "compiled"}),
             "lrnn-spder (auto)": ("lrnn-spder", {}), "lrnn-spder (fused eager)": ("lrnn-spder", {"kernel": "fused"})}
    if a.no_compiled:
        specs.pop("lrnn-spder (compiled)")
    models = {k: build(m, 2, 1, params=a.params, device=device, **kw) for k, (m, kw) in specs.items()}
    opts = {k: torch.optim.Adam(m.parameters(), 1e-4) for k, m in models.items()}
    times = {k: [] for k in models}
    rows = []
    # what kernel="auto" runs here (C++ on the CPU, compiled/Triton on CUDA)
    auto_is = resolve_kernel("auto", "harmonic", x.new_zeros(1, 1, 2), x.new_zeros(1, 2, 4), "spder")

    def step(k):
        opts[k].zero_grad(set_to_none=True)
        torch.mean((models[k](x) - y) ** 2).backward()
        opts[k].step()

    for k in list(models):   # first step apart (it compiles); a kernel that fails is reported, not fatal
        if budget.left() < 2:
            rows.append({"section": "kernel", "item": k, "skipped": "budget"})
            del models[k], times[k]
            continue
        try:
            step(k)
        except Exception as e:  # noqa: BLE001
            traceback.print_exc()
            rows.append({"section": "kernel", "item": k, "skipped": f"error: {type(e).__name__}: {e}"[:300]})
            del models[k], times[k]
    for rep in range(a.kernel_repeats + 1):   # one more warm-up round
        if budget.left() < 2:
            break
        for k in models:
            _sync(device)
            t0 = time.perf_counter()
            step(k)
            _sync(device)
            if rep >= 1:
                times[k].append(time.perf_counter() - t0)
    base = statistics.median(times["siren"]) if times.get("siren") else float("nan")
    for k, t in times.items():
        if not t:
            rows.append({"section": "kernel", "item": k, "skipped": "budget"})
            continue
        med = statistics.median(t)
        rows.append({"section": "kernel", "item": k, "metric": "s/step (x SIREN)", "value": med,
                     "x_siren": med / base, "batch": a.kernel_batch, "repeats": len(t),
                     "params": count_params(models[k]), "auto_is": auto_is})
        print(f"kernel {k:24s} {med:.4f} s/step ({med / base:.2f}x SIREN)", file=sys.stderr, flush=True)
    return rows


# ----------------------------------------------------------------------------------------------


def table(rows: list[dict], header: str) -> str:
    lines = [header, "", "| section | run | metric | value | steps | s/step | note |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        if "skipped" in r:
            lines.append(f"| {r['section']} | {r['item']} | | skipped ({r['skipped']}) | | | |")
            continue
        v = r["value"]
        val = f"{v:.2f} / {r['ssim']:.4f}" if r["section"] == "ct" else (f"{v:.4f}" if r["section"] == "kernel"
                                                                         else f"{v:.3g}")
        note = {"audio": f"{r.get('samples', '')} samples, lr {r.get('lr', '')}",
                "ct": f"{r.get('views')} views, {r.get('size')}px, {r.get('params')} params",
                "classify": f"{r.get('precision')}, batch {r.get('batch')}",
                "kernel": f"{r.get('x_siren', float('nan')):.2f}x SIREN, batch {r.get('batch')}"
                          + (f"; auto = {r['auto_is']}" if "(auto)" in r["item"] else "")}[r["section"]]
        if r["section"] in ("audio", "ct") and r["steps"] < r.get("steps_asked", r["steps"]):
            note += f"; stopped by the budget at {r['steps']} of {r['steps_asked']} steps"
        sps = r.get("s_per_step")
        lines.append(f"| {r['section']} | {r['item']} | {r['metric']} | {val} | {r.get('steps', '')} | "
                     f"{'' if sps is None else f'{sps:.4f}'} | {note} |")
    return "\n".join(lines) + "\n"


# the short fixed-cost sections first; audio and CT then share what is left of the budget
SECTIONS = {"kernel": section_kernel, "classify": section_classify, "audio": section_audio, "ct": section_ct}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's)")
    p.add_argument("--sections", default=",".join(SECTIONS), help="comma list of " + ", ".join(SECTIONS))
    p.add_argument("--budget", type=float, default=480.0,
                   help="wall seconds for all runs, in total (compiles and start-up come on top: ~1-2 min)")
    p.add_argument("--params", type=int, default=200_000, help="audio and kernel models")
    p.add_argument("--audio-steps", type=int, default=5000)
    p.add_argument("--audio-seconds", type=float, default=1.0)
    p.add_argument("--audio-share", type=float, default=0.45, help="share of the budget left for audio")
    p.add_argument("--ct-steps", type=int, default=5000)
    p.add_argument("--ct-views", type=int, default=100)
    p.add_argument("--ct-size", type=int, default=256)
    p.add_argument("--ct-params", type=int, default=180_000)
    p.add_argument("--ct-share", type=float, default=0.95, help="share of the budget left for CT")
    p.add_argument("--cls-batch", type=int, default=256)
    p.add_argument("--cls-iters", type=int, default=50)
    p.add_argument("--kernel-batch", type=int, default=None, help="default 65536 on CUDA, 8192 on the CPU")
    p.add_argument("--kernel-repeats", type=int, default=20)
    p.add_argument("--no-compiled", action="store_true", help="skip the torch.compile'd kernel row")
    p.add_argument("--out", default="results/gpu_protocols")
    p.add_argument("--quick", action="store_true", help="tiny CPU setting (~1 minute; the test)")
    a = p.parse_args(argv)
    check_out(a.out)   # before any work: an earlier result is never overwritten
    if a.quick:
        a.params, a.audio_steps, a.audio_seconds = 3000, 30, 0.05
        a.ct_steps, a.ct_views, a.ct_size, a.ct_params = 20, 12, 32, 3000
        a.cls_batch, a.cls_iters, a.kernel_batch, a.kernel_repeats = 8, 2, 512, 2
        a.no_compiled = True   # Inductor's first compile alone takes longer than the whole quick run
    if a.threads:
        torch.set_num_threads(a.threads)
    device = resolve_device(a.device)
    if a.kernel_batch is None:
        a.kernel_batch = 65536 if device.type == "cuda" else 8192
    wanted = [s.strip() for s in a.sections.split(",") if s.strip()]
    bad = [s for s in wanted if s not in SECTIONS]
    if bad:
        p.error(f"--sections: unknown {', '.join(bad)} (choose from {', '.join(SECTIONS)})")
    budget = Budget(a.budget)
    dev_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    t0 = time.perf_counter()
    with RunFolder(a.out) as run:   # built under a hidden name, renamed when complete
        rows = []
        for s in wanted:
            try:   # one failing section (a missing Triton, say) must not lose the others of a GPU session
                rows += SECTIONS[s](a, device, budget)
            except Exception as e:  # noqa: BLE001 - recorded in the table and on stderr
                traceback.print_exc()
                rows.append({"section": s, "item": "(section)", "skipped": f"error: {type(e).__name__}: {e}"[:300]})
            run.write_json("metrics.json", {"rows": rows, "settings": vars(a), "device": dev_name})
        header = (f"device {dev_name} ({device.type}), {torch.get_num_threads()} CPU threads, "
                  f"total {time.perf_counter() - t0:.0f} s")
        run.write_text("table.md", table(rows, header))
        run.write_json("metrics.json", {"rows": rows, "settings": vars(a), "device": dev_name,
                                        "seconds": time.perf_counter() - t0, "versions": versions()})
    print(table(rows, header))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
