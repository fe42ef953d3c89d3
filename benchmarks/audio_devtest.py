"""LRNN vs SIREN on speech and music clips, the paper's audio protocol with a development / test split:
1 s excerpts at 44.1 kHz, ~200k parameters, full batch (every sample every step), Adam with cosine decay to
0.1x, equal steps; and equal wall time on one clip.  Clips: benchmarks/audio_clips.py (espeak-ng speech in
several voices, seeded synthesised music, 1 s of benchmarks/data/speech.wav); tune on ``--set dev``, report
on ``--set test``.

    python benchmarks/audio_devtest.py --set test --steps 2000              # the protocol (GPU-sized)
    python benchmarks/audio_devtest.py --set dev --params 50000 --steps 300 \\
        --models "siren,lrnn-spder,lrnn-spder[w0_first=1000]"               # a CPU-sized sweep
    python benchmarks/audio_devtest.py --quick                              # seconds-long smoke run

Learning rates are each family's audio default (inr.models.spec) unless ``--lr MODEL=LR``; a model written
``MODEL@LR`` in ``--models`` (e.g. ``siren@3e-4``) is its own row at that rate.  The equal-time
part (``--wall SECONDS``, 0 to skip) fits ``--wall-models`` on ``--wall-clip`` for that many training
seconds each.  Speech clips are skipped (and listed) when espeak-ng is not installed.  Writes a new folder
(--out, default results/audio_devtest; an existing one is refused): clips/ (the excerpts as wav), table.md
and metrics.json.  Runs go through benchmarks/lrnn_study.py's worker (one process each; whole-clip MSE on
the [-1, 1] scale every --eval-every steps, off the clock).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))
import audio_clips  # noqa: E402
import lrnn_study  # noqa: E402
from inr.models import spec  # noqa: E402
from inr.runs import RunFolder, check_out  # noqa: E402

MODELS = "siren,lrnn-spder,hash"


def write_clips(names: list[str], folder: Path, seconds: float, rate: int | None, skipped: list) -> dict:
    """Render the set's clips into ``folder`` as float wav files; name -> path."""
    from scipy.io import wavfile
    from scipy.signal import resample_poly

    folder.mkdir(parents=True, exist_ok=True)
    paths = {}
    recipes = {r["name"]: r for s in audio_clips.SETS.values() for r in s}
    for name in names:
        r = recipes[name]
        if r["kind"] == "speech" and not audio_clips.have_espeak():
            skipped.append(name)
            continue
        x, sr = audio_clips.make_clip(r, seconds)
        if rate and rate != sr:
            g = math.gcd(rate, sr)
            x = resample_poly(x, rate // g, sr // g)
            x, sr = x / np.abs(x).max(), rate
        path = folder / f"{name.replace('.', '_')}.wav"
        wavfile.write(path, sr, x.astype(np.float32))
        paths[name] = str(path)
    return paths


def table(results: list[dict], clips: list[str], ref: str = "siren") -> str:
    """Per-clip whole-clip MSE (x 1e-4) and each model's ratio to ``ref`` (ref MSE / model MSE)."""
    models = list(dict.fromkeys(r["model"] for r in results))
    val = {(r["model"], r["clip"]): r.get("mse") for r in results if "error" not in r}
    lines = ["| model | " + " | ".join(clips) + " | geomean | x better than " + ref + " (geomean; worst) |",
             "|---|" + "---|" * (len(clips) + 2)]
    for m in models:
        vs = [val.get((m, c)) for c in clips]
        ok = [v for v in vs if v]
        g = math.exp(sum(math.log(v) for v in ok) / len(ok)) if ok else None
        ratios = [val[(ref, c)] / val[(m, c)] for c in clips if val.get((m, c)) and val.get((ref, c))]
        rg = math.exp(sum(math.log(x) for x in ratios) / len(ratios)) if ratios else None
        cells = ["-" if v is None else f"{v * 1e4:.3g}" for v in vs]
        cells.append("-" if g is None else f"{g * 1e4:.3g}")
        cells.append("-" if rg is None else f"{rg:.2f}; {min(ratios):.2f}")
        lines.append(f"| {m} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--set", choices=("dev", "test", "both"), default="test")
    p.add_argument("--clips", default="", help="comma list of clip names (default: the set's clips)")
    p.add_argument("--models", default=MODELS, help="registry names, each optionally with [key=value,...]")
    p.add_argument("--params", type=int, default=200_000)
    p.add_argument("--clip-seconds", type=float, default=1.0)
    p.add_argument("--rate", type=int, default=0, help="resample the clips to this rate (0: 44.1 kHz as made)")
    p.add_argument("--steps", type=int, default=2000, help="full-batch steps per run (equal steps)")
    p.add_argument("--batch", type=int, default=0, help="points per step (0: full batch)")
    p.add_argument("--wall", type=float, default=0.0, help="equal-wall-time seconds per run (0: skip)")
    p.add_argument("--wall-clip", default="", help="clip of the equal-time runs (default: the first)")
    p.add_argument("--wall-models", default="siren,lrnn-spder")
    p.add_argument("--eval-every", type=int, default=100)
    p.add_argument("--ref", default="siren", help="the row the ratios are taken against (a --models entry)")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--jobs", type=int, default=1)
    p.add_argument("--out", default="results/audio_devtest")
    p.add_argument("--quick", action="store_true", help="tiny smoke setting (seconds)")
    a = p.parse_args(argv)
    if a.quick:
        a.set, a.clips, a.models, a.params, a.steps = "test", "music-s11", "siren,lrnn-spder", 2000, 4
        a.clip_seconds, a.rate, a.wall, a.eval_every = 0.05, 8000, 1.0, 2
    check_out(Path(a.out))
    lrs = {k: float(v) for k, v in (s.rsplit("=", 1) for s in a.lr)}   # "MODEL[opt=x]=LR" too
    sets = ("dev", "test") if a.set == "both" else (a.set,)
    with RunFolder(Path(a.out)) as folder:
        out = folder.path
        text, skipped, allres = [], [], {}
        header = (f"# LRNN audio, dev/test: {a.clip_seconds:g} s clips, ~{a.params} params, "
                  f"{'full batch' if not a.batch else f'batch {a.batch}'}, {a.steps} steps, lr per family unless "
                  f"set ({lrs or 'defaults'}), {a.jobs} x {a.threads} threads, load {os.getloadavg()[0]:.1f}\n")
        for s in sets:
            names = [c for c in a.clips.split(",") if c] or [r["name"] for r in audio_clips.SETS[s]]
            paths = write_clips(names, out / "clips", a.clip_seconds, a.rate or None, skipped)
            specs = []
            labels = []
            for clip, path in paths.items():
                for label in lrnn_study.split_models(a.models):
                    model, lr = model_lr(label, lrs)
                    specs.append(_spec(a, model, path, lr, a.steps, None))
                    labels.append(label)
            res = lrnn_study.run_specs(specs, a.jobs)
            for r, sp, label in zip(res, specs, labels):
                r["clip"] = next(c for c, pth in paths.items() if pth == sp["signal"])
                r["model"] = label   # "MODEL@LR" rows keep their rate in the name
            allres[f"{s}_steps"] = res
            text.append(f"\n## {s} set, equal steps ({a.steps}); whole-clip MSE x 1e-4\n\n" + table(res, list(paths), a.ref))
        if a.wall > 0:
            clip = a.wall_clip or names[0]
            path = write_clips([clip], out / "clips", a.clip_seconds, a.rate or None, skipped).get(clip)
            if path:
                specs = []
                labels = lrnn_study.split_models(a.wall_models)
                for label in labels:
                    model, lr = model_lr(label, lrs)
                    specs.append(_spec(a, model, path, lr, 10 ** 9, a.wall))
                res = lrnn_study.run_specs(specs, a.jobs)
                for r, label in zip(res, labels):
                    r["clip"], r["model"] = clip, label
                allres["wall"] = res
                steps = ", ".join(f"{r['model']} {r.get('steps')}" for r in res)
                text.append(f"\n## equal wall time ({a.wall:g} s per run, steps: {steps}); whole-clip MSE x 1e-4\n\n"
                            + table(res, [clip], a.ref))
        if skipped:
            text.append(f"\nskipped (espeak-ng not installed): {', '.join(sorted(set(skipped)))}\n")
        body = header + "".join(text)
        (out / "table.md").write_text(body)
        (out / "metrics.json").write_text(json.dumps({"settings": vars(a), "runs": allres}, indent=2, default=str))
    print(body, flush=True)
    return 0


def model_lr(label: str, lrs: dict) -> tuple[str, float]:
    """``MODEL[opts]@LR`` -> (MODEL[opts], LR); without ``@``: ``--lr`` for the spec or its family, else the
    family's audio default (inr.models.spec)."""
    model, _, at = label.rpartition("@") if "@" in label else (label, "", "")
    if at:
        return model, float(at)
    name = lrnn_study.parse_model(model)[0]
    return model, lrs.get(model, lrs.get(name, spec(name).task("audio").lr))


def _spec(a, model, path, lr, steps, seconds) -> dict:
    return {"model": model, "signal": path, "size": 0, "audio_seconds": a.clip_seconds, "params": a.params,
            "lr": lr, "batch": a.batch or None, "seed": a.seed, "steps": steps, "seconds": seconds,
            "eval_every": a.eval_every, "targets": list(lrnn_study.AUDIO_TARGETS), "threads": a.threads}


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:   # e.g. an existing --out folder
        print(f"audio_devtest: {e}", file=sys.stderr)
        sys.exit(2)
