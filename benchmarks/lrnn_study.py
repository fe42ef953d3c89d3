"""LRNN study: LRNN-SPDER, LRNN-SIREN, SIREN and SPDER at the same parameter budget, at equal steps
(same batch, step-based cosine schedule) and at equal wall time, on images and audio.

    python benchmarks/lrnn_study.py                         # images + audio, both modes (hours on a CPU)
    python benchmarks/lrnn_study.py --part images --mode steps --steps 300
    python benchmarks/lrnn_study.py --part audio --mode time --seconds 120
    python benchmarks/lrnn_study.py --models "siren,lrnn-spder,lrnn-spder[component=mlp,band=component]"
    python benchmarks/lrnn_study.py --quick                 # seconds-long smoke run

Models are registry names, optionally with options in brackets (ablations: ``lrnn-spder[harmonics=1]``).
Images: the five gray scikit-image images of image_fit.py at --size plus the RGB astronaut.  Audio: the
generated test clip (inr.signals.test_audio), benchmarks/data/speech.wav (espeak-ng speech, 44.1 kHz) and a
synthesised music clip (notes with harmonics and envelopes, 44.1 kHz), cut to --audio-seconds.

Quality is measured on the WHOLE signal every --eval-every steps, off the training clock: PSNR on [0, 1]
(standard 10 log10(1/MSE)) for images, MSE on the [-1, 1] amplitude scale for audio.  Writes
results/lrnn_study/<part>_<mode>/: table.md, metrics.json (summary + every run with its curve), and
quality-vs-step / quality-vs-seconds plots.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from inr.runs import RunFolder, check_out  # noqa: E402

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from inr.models import spec  # noqa: E402
import fitbench  # noqa: E402  (signal loading and tables shared with image_fit.py / audio_fit.py)
IMAGES = ("camera", "moon", "coins", "brick", "gravel", "astronaut")
AUDIO = ("test_audio", "speech", "music")
MODELS = ("siren", "spder", "lrnn-siren", "lrnn-spder")
# Adam learning rates: each family's spec for the signal's kind (inr.models.spec), unless --lr names one.
IMAGE_TARGETS, AUDIO_TARGETS = (30.0, 40.0), (1e-3, 1e-4)


# ----------------------------------------------------------------------------------------------
# Signals


def music_clip(seconds: float = 4.0, rate: int = 44100) -> np.ndarray:
    """A deterministic music-like clip: a melody and a bass line of plucked notes, each with 6 harmonics
    (1/k amplitudes, slightly inharmonic), an attack-decay envelope and a little vibrato."""
    n = int(round(seconds * rate))
    t = np.arange(n) / rate
    x = np.zeros(n)
    melody = [64, 67, 71, 72, 71, 67, 69, 72, 76, 74, 72, 71]   # MIDI notes
    bass = [40, 43, 45, 43]
    for notes, dur, amp in ((melody, 1 / 3, 0.5), (bass, 1.0, 0.4)):
        for i in range(int(math.ceil(seconds / dur))):
            f0 = 440.0 * 2 ** ((notes[i % len(notes)] - 69) / 12)
            on = i * dur
            m = (t >= on) & (t < on + 2.5 * dur)
            tt = t[m] - on
            env = (1 - np.exp(-tt / 0.005)) * np.exp(-tt / (0.6 * dur))
            vib = 1 + 0.002 * np.sin(2 * np.pi * 5.5 * tt)
            for k in range(1, 7):
                fk = f0 * k * (1 + 0.0004 * k * k)
                x[m] += amp / k * env * np.sin(2 * np.pi * fk * vib * tt + 0.7 * k)
    return x / np.abs(x).max()


def load_signal(name: str, size: int, audio_seconds: float):
    from inr.signals import audio_from_array, load, test_audio

    if name == "test_audio":
        return test_audio()
    if name.endswith(".wav"):   # a prepared clip (benchmarks/audio_devtest.py), used whole
        return load(name)
    if name == "music":
        return audio_from_array(music_clip(audio_seconds), 44100)
    if name == "speech":
        sig = load(HERE / "data" / "speech.wav")
        n = min(sig.values.shape[0], int(round(audio_seconds * sig.rate)))
        return audio_from_array(sig.values[:n], sig.rate)
    return fitbench.load_signal({"builtin": name, "size": size, "rgb": name == "astronaut"})


def split_models(text: str) -> list[str]:
    """Split a comma list of model specs, keeping commas inside [...] options (and a trailing ``@LR``)."""
    return [m.strip() for m in re.findall(r"[^,\[]+(?:\[[^\]]*\])?(?:@[^,]*)?", text) if m.strip()]


def parse_model(spec: str) -> tuple[str, dict]:
    """``name[key=value,...]`` -> (name, options); values are parsed as Python literals where possible."""
    m = re.fullmatch(r"([\w-]+)(?:\[(.*)\])?", spec.strip())
    if not m:
        raise ValueError(f"bad model spec {spec!r}")
    opts = {}
    for kv in filter(None, (m.group(2) or "").split(",")):
        k, v = kv.split("=", 1)
        try:
            opts[k.strip()] = json.loads(v)
        except json.JSONDecodeError:
            opts[k.strip()] = v.strip()
    return m.group(1), opts


# ----------------------------------------------------------------------------------------------
# One run (in its own process, so peak memory is its own)


def worker(spec: dict) -> dict:
    import torch

    from inr import fitting as F
    from inr import metrics as M
    from inr.models import ModelConfig, count_params
    from inr.train import TrainConfig, fit, seed_everything

    torch.set_num_threads(spec["threads"])
    sig = load_signal(spec["signal"], spec["size"], spec["audio_seconds"])
    name, opts = parse_model(spec["model"])
    seed_everything(spec["seed"])
    model = ModelConfig(name, spec["params"], opts).build(sig.coord_dim, sig.channels, sig.kind)
    coords, values = sig.coords(), sig.targets()
    base = F.make_loss(model, coords, values, sig.kind, spec["batch"])

    def loss_fn(step):  # the batch metric is logged under its own name; targets use the whole signal
        loss, info = base(step)
        return loss, {f"batch_{k}": v for k, v in info.items()}

    image = sig.kind == "image"

    def evaluate(step):
        pred = F.predict(model, coords, sig.kind).numpy()
        t = values.double().numpy()
        if image:
            return {"psnr": M.psnr(np.clip(pred, 0, 1), t, data_range=1.0)}
        return {"mse": M.mse(pred, t)}

    targets = spec["targets"]
    cfg = TrainConfig(steps=spec["steps"], seconds=spec["seconds"], lr=spec["lr"], targets=tuple(targets),
                      target_key="psnr" if image else "mse", target_mode="max" if image else "min",
                      seed=spec["seed"], quiet=True, desc=spec["model"], log_every=10 ** 9)
    saved = F.saved_tensor_bytes(loss_fn)
    res = fit(model, loss_fn, cfg, evaluate=evaluate, eval_every=spec["eval_every"])
    curve = [(r["step"], r["seconds"], r.get("eval_psnr", r.get("eval_mse"))) for r in res.history
             if "eval_psnr" in r or "eval_mse" in r]
    pred = F.predict(model, coords, sig.kind)
    out = {"model": spec["model"], "signal": spec["signal"], "params": count_params(model), "lr": spec["lr"],
           "batch": spec["batch"], "steps": res.steps, "seconds": res.seconds,
           "seconds_per_step": res.seconds_per_step, "time_to_target": res.time_to_target,
           "saved_tensors_bytes": saved, "peak_rss_bytes": F.peak_rss_bytes(), "curve": curve,
           "events": res.events, **F.signal_metrics(sig, pred)}
    return out


def _run_one(spec: dict, label: str) -> dict:
    env = {**os.environ, "PYTHONPATH": str(HERE.parent) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.run([sys.executable, __file__, "--worker", json.dumps(spec)], capture_output=True, text=True,
                          env=env)
    if proc.returncode != 0:
        err = (proc.stderr.strip().splitlines() or ["failed"])[-1]
        print(f"{label}  FAILED: {err}", file=sys.stderr, flush=True)
        return {**spec, "error": err}
    r = json.loads(proc.stdout.strip().splitlines()[-1])
    key = "psnr" if "psnr" in r else "mse"
    print(f"{label}  {key} {r[key]:.4g}  steps {r['steps']}  s/step {r['seconds_per_step']:.3f}", flush=True)
    return r


def run_specs(specs: list[dict], jobs: int = 1) -> list[dict]:
    """Each run in its own process; ``jobs`` at a time (timings are only comparable with jobs x threads
    <= cores and nothing else running)."""
    from concurrent.futures import ThreadPoolExecutor

    labels = [f"[{i + 1}/{len(specs)}] {s['model']} on {s['signal']}" for i, s in enumerate(specs)]
    with ThreadPoolExecutor(max_workers=max(1, jobs)) as ex:
        return list(ex.map(_run_one, specs, labels))


# ----------------------------------------------------------------------------------------------
# Summary, table, plots


def summarise(results: list[dict], kind: str, targets) -> list[dict]:
    rows = []
    ok = [r for r in results if "error" not in r]
    for model in dict.fromkeys(r["model"] for r in results):
        rs = [r for r in ok if r["model"] == model]
        row = {"model": model, "runs": len(rs), "failed": sum(1 for r in results if r["model"] == model) - len(rs)}
        if not rs:
            rows.append(row)
            continue
        row["params"] = rs[0]["params"]
        if kind == "image":
            row["mean_psnr"] = statistics.mean(r["psnr"] for r in rs)
            row["mean_ssim"] = statistics.mean(r["ssim"] for r in rs if r.get("ssim") is not None)
        else:
            row["mean_mse"] = statistics.mean(r["mse"] for r in rs)
            row["geomean_mse"] = math.exp(statistics.mean(math.log(max(r["mse"], 1e-300)) for r in rs))
        for t in targets:
            hits = [r["time_to_target"].get(str(float(t))) for r in rs]
            row[f"success@{t:g}"] = sum(h is not None for h in hits) / len(rs)
            secs = [h["seconds"] for h in hits if h]
            row[f"median_s_to_{t:g}"] = statistics.median(secs) if secs else None
        row["s_per_step"] = statistics.median(r["seconds_per_step"] for r in rs)
        row["steps"] = statistics.median(r["steps"] for r in rs)
        row["saved_MB"] = statistics.median(r["saved_tensors_bytes"] / 2 ** 20 for r in rs)
        row["peak_rss_MB"] = statistics.median(r["peak_rss_bytes"] / 2 ** 20 for r in rs)
        rows.append(row)
    ref = next((r for r in rows if r["model"] == "siren" and r.get("runs")), None)
    for r in rows:
        if ref and r.get("runs"):
            r["x_siren_time"] = r["s_per_step"] / ref["s_per_step"]
            r["x_siren_memory"] = r["saved_MB"] / ref["saved_MB"]
    return rows


def per_signal_table(results: list[dict], kind: str) -> str:
    key = "psnr" if kind == "image" else "mse"
    models = list(dict.fromkeys(r["model"] for r in results))
    signals = list(dict.fromkeys(r["signal"] for r in results))
    val = {(r["model"], r["signal"]): r.get(key) for r in results if "error" not in r}
    fmt = (lambda v: f"{v:.2f}") if kind == "image" else (lambda v: f"{v:.3g}")
    lines = ["| model | " + " | ".join(signals) + " |", "|---|" + "---|" * len(signals)]
    for m in models:
        lines.append(f"| {m} | " + " | ".join("-" if val.get((m, s)) is None else fmt(val[(m, s)]) for s in signals)
                     + " |")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], kind: str, path: Path, title: str) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4.2))
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 2)
    colours: dict = {}
    for r in results:
        if "error" in r or not r["curve"]:
            continue
        c = colours.setdefault(r["model"], f"C{len(colours)}")
        steps, secs, vals = zip(*r["curve"])
        label = r["model"] if r["model"] not in [h.get_label() for h in axes[0].lines] else None
        axes[0].plot(steps, vals, color=c, lw=0.9, alpha=0.8, label=label)
        axes[1].plot(secs, vals, color=c, lw=0.9, alpha=0.8)
    ylabel = "whole-image PSNR (dB)" if kind == "image" else "whole-clip MSE ([-1, 1] scale)"
    for ax, xl in zip(axes, ("step", "training seconds")):
        ax.set_xlabel(xl)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if kind != "image":
            ax.set_yscale("log")
    axes[0].legend(fontsize=8)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--part", choices=("images", "audio", "all"), default="all")
    p.add_argument("--mode", choices=("steps", "time", "both"), default="both")
    p.add_argument("--models", default=",".join(MODELS),
                   help="comma list of registry names, each optionally with [key=value,...] options")
    p.add_argument("--images", default=",".join(IMAGES))
    p.add_argument("--audio", default=",".join(AUDIO))
    p.add_argument("--size", type=int, default=256, help="image side in pixels")
    p.add_argument("--audio-seconds", type=float, default=3.0, help="length of the speech and music clips")
    p.add_argument("--params", type=int, default=200_000)
    p.add_argument("--steps", type=int, default=300, help="steps per run in the equal-steps mode")
    p.add_argument("--seconds", type=float, default=120.0, help="wall budget per run in the equal-time mode")
    p.add_argument("--batch", type=int, default=8192, help="random points per step, every model")
    p.add_argument("--eval-every", type=int, default=25, help="whole-signal evaluation cadence (steps)")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR", help="override a learning rate")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="torch threads per run")
    p.add_argument("--jobs", type=int, default=1, help="runs at a time (equal-steps quality does not depend on it)")
    p.add_argument("--out", default="results/lrnn_study")
    p.add_argument("--quick", action="store_true", help="tiny smoke setting (seconds)")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.audio, a.size, a.params, a.steps, a.seconds = "camera", "test_audio", 24, 3000, 6, 2.0
        a.batch, a.eval_every, a.audio_seconds = 256, 3, 0.2
        a.models = "siren,lrnn-spder"
    lrs = {k: float(v) for k, v in (s.split("=", 1) for s in a.lr)}
    parts = ("images", "audio") if a.part == "all" else (a.part,)
    modes = ("steps", "time") if a.mode == "both" else (a.mode,)
    for part in parts:   # refuse an existing result folder before any work
        for mode in modes:
            check_out(Path(a.out) / f"{part}_{mode}")
    for part in parts:
        kind = "image" if part == "images" else "audio"
        signals = (a.images if part == "images" else a.audio).split(",")
        targets = IMAGE_TARGETS if kind == "image" else AUDIO_TARGETS
        for mode in modes:
            # built under a hidden name and renamed when complete; an earlier study is never overwritten
            with RunFolder(Path(a.out) / f"{part}_{mode}") as folder:
                out = folder.path
                specs = []
                for signal in signals:
                    for model in split_models(a.models):
                        name = parse_model(model)[0]
                        lr = lrs.get(model, lrs.get(name, spec(name).task(kind).lr))
                        specs.append({"model": model, "signal": signal, "size": a.size, "audio_seconds": a.audio_seconds,
                                      "params": a.params, "lr": lr, "batch": a.batch, "seed": a.seed,
                                      "steps": a.steps if mode == "steps" else 10 ** 9,
                                      "seconds": None if mode == "steps" else a.seconds,
                                      "eval_every": a.eval_every, "targets": list(targets), "threads": a.threads})
                t0 = time.time()
                results = run_specs(specs, a.jobs)
                rows = summarise(results, kind, targets)
                budget = f"{a.steps} steps" if mode == "steps" else f"{a.seconds:g} s"
                header = (f"# LRNN study: {part}, equal {'steps' if mode == 'steps' else 'wall time'} ({budget}, batch "
                          f"{a.batch}, ~{a.params} params, {a.jobs} x {a.threads} threads, load {os.getloadavg()[0]:.1f})\n\n")
                text = header + fitbench.markdown_table(rows) + "\nPer signal (" + ("PSNR dB" if kind == "image" else "MSE") + "):\n\n" \
                    + per_signal_table(results, kind)
                (out / "table.md").write_text(text)
                (out / "metrics.json").write_text(json.dumps({"summary": rows, "runs": results, "settings": vars(a),
                                                              "wall_seconds": time.time() - t0}, indent=2, default=str))
                plot(results, kind, out / f"{'psnr' if kind == 'image' else 'mse'}_curves.png", header.strip("# \n"))
            print(text, flush=True)
    return 0


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--worker":
        print(json.dumps(worker(json.loads(sys.argv[2])), default=str))
    else:
        try:
            sys.exit(main())
        except ValueError as e:   # e.g. an existing --out folder
            print(f"lrnn_study: {e}", file=sys.stderr)
            sys.exit(2)
