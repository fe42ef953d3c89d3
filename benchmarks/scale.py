"""Fits at every size (issue 21): `inr fit` with its defaults on images of 256^2 .. 4096^2 (mosaics of four
scikit-image photos) and on synthesised stereo music of 1 s .. 60 s at 44.1 kHz.

Each fit is the real command (``python -m inr fit FILE --out ... --quiet``) in its own process, so the
table reports, per size: the whole command's wall time (start-up, loading, training, evaluations and
writing), the training time, the evaluation time, PSNR (images) / MSE (audio), the training seconds to
30 / 40 dB (1e-4 / 1e-5 for audio) from the fit's evaluations, and the process's peak memory (its maximum
resident set size, from ``wait4``).  The table goes to ``OUT/table.md`` and ``OUT/metrics.json`` through
:class:`inr.runs.RunFolder`; each fit's run folder is kept under ``OUT/fits/``.

    python benchmarks/scale.py --out results/scale --threads 2
    python benchmarks/scale.py --quick --out /tmp/scale-quick     # a tiny setting (the test)
"""
from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from inr.runs import RunFolder  # noqa: E402

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket")
IMAGE_TARGETS, AUDIO_TARGETS = (30.0, 40.0), (1e-4, 1e-5)


def mosaic(side: int) -> np.ndarray:
    """A ``side`` x ``side`` RGB uint8 mosaic: four scikit-image photos, each resized (anti-aliased) to a
    quarter (``side / 2`` square, centre-cropped to square first)."""
    from skimage import data
    from skimage.transform import resize

    half = side // 2
    out = np.zeros((side, side, 3), dtype=np.uint8)
    for i, name in enumerate(PHOTOS):
        a = getattr(data, name)()
        h, w = a.shape[:2]
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s, :3]
        tile = resize(a, (half, half), anti_aliasing=half < s, preserve_range=True)
        r, c = divmod(i, 2)
        out[r * half:(r + 1) * half, c * half:(c + 1) * half] = np.clip(np.round(tile), 0, 255).astype(np.uint8)
    return out


def music(seconds: float, rate: int = 44100, seed: int = 0) -> np.ndarray:
    """Deterministic stereo music, ``(N, 2)`` in [-1, 1]: four instruments of additive tones with
    envelopes -- a plucked melody (8 harmonics, fast attack, exponential decay), a bass (4 harmonics), a
    pad playing three-note chords (slow attack and release, slight detune) and a bell (inharmonic partials)
    -- each panned to its own place in the stereo field.  Notes from a fixed pentatonic pattern with
    seeded variations; generated in blocks of one note, so memory ~ the output."""
    rng = np.random.default_rng(seed)
    n = int(round(seconds * rate))
    out = np.zeros((n, 2))
    scale = [0, 2, 4, 7, 9, 12, 14, 16]

    def note(start, dur, f0, partials, attack, decay, pan, amp):
        i0 = int(start * rate)
        i1 = min(n, int((start + dur + 4 * decay) * rate))
        if i0 >= n or i1 <= i0:
            return
        t = np.arange(i1 - i0) / rate
        env = (1 - np.exp(-t / attack)) * np.where(t < dur, 1.0, np.exp(-(t - dur) / decay))
        env *= np.exp(-t / (4 * dur + decay))
        x = np.zeros_like(t)
        for k, (mult, a) in enumerate(partials):
            x += a * np.sin(2 * np.pi * f0 * mult * t + 0.9 * k)
        x *= amp * env
        out[i0:i1, 0] += x * math.cos(pan * math.pi / 2)
        out[i0:i1, 1] += x * math.sin(pan * math.pi / 2)

    midi = lambda m: 440.0 * 2 ** ((m - 69) / 12)
    beat = 0.25
    for i in range(int(math.ceil(seconds / beat))):          # melody: a pluck on every beat
        m = 72 + scale[(i * 3 + int(rng.integers(0, 3))) % len(scale)]
        note(i * beat, 0.6 * beat, midi(m), [(k, 1 / k) for k in range(1, 9)], 0.003, 0.08, 0.3, 0.35)
    for i in range(int(math.ceil(seconds / (4 * beat)))):    # bass: every bar of four beats
        m = 40 + (0, 5, 7, 3)[i % 4]
        note(i * 4 * beat, 3.5 * beat, midi(m), [(k, 1 / k) for k in range(1, 5)], 0.01, 0.1, 0.5, 0.4)
    for i in range(int(math.ceil(seconds / (8 * beat)))):    # pad: three-note chords, two bars each
        for j, m in enumerate((60, 64, 67)):
            m += (0, 5, 7, 3)[i % 4]
            note(i * 8 * beat, 7 * beat, midi(m) * (1 + 0.001 * (j - 1)), [(1, 1.0), (2, 0.3), (3, 0.1)],
                 0.3, 0.4, 0.8, 0.12)
    for i in range(int(math.ceil(seconds / (16 * beat)))):   # bell: inharmonic partials every four bars
        note(i * 16 * beat + 2 * beat, 0.1, midi(84), [(1, 1.0), (2.76, 0.5), (5.4, 0.25), (8.93, 0.12)],
             0.001, 1.0, 0.65, 0.2)
    peak = np.abs(out).max()
    return out / peak * 0.9 if peak > 0 else out


def write_inputs(folder: Path, sides, audio_seconds) -> list[dict]:
    from PIL import Image
    import soundfile as sf

    cases = []
    for side in sides:
        if str(side).startswith("camera"):   # the cameraman (gray): camera512 is inr fit's built-in
            n = int(str(side)[6:] or 512)
            p = None
            if n != 512:
                from skimage import data
                from skimage.transform import resize

                p = folder / f"camera{n}.png"
                a = resize(data.camera(), (n, n), anti_aliasing=n < 512, preserve_range=True)
                Image.fromarray(np.clip(np.round(a), 0, 255).astype(np.uint8)).save(p)
            cases.append({"name": f"cameraman {n}x{n}", "kind": "image", "file": p, "size": n * n, "slug": f"camera{n}"})
            continue
        side = int(side)
        p = folder / f"mosaic{side}.png"
        Image.fromarray(mosaic(side)).save(p)
        cases.append({"name": f"mosaic {side}x{side} RGB", "kind": "image", "file": p, "size": side * side * 3})
    for sec in audio_seconds:
        p = folder / f"music{sec:g}s.wav"
        sf.write(p, music(sec), 44100, subtype="PCM_16")
        cases.append({"name": f"music {sec:g} s 44.1 kHz stereo", "kind": "audio", "file": p,
                      "size": int(round(sec * 44100)) * 2})
    return cases


def run_fit(case: dict, out: Path, seconds: float | None, threads: int | None, extra: list[str]) -> dict:
    """One `inr fit` in a child process: its metrics plus wall time and peak RSS (wait4)."""
    kind = case["kind"]
    targets = ["--target-psnr", ",".join(f"{t:g}" for t in IMAGE_TARGETS)] if kind == "image" else \
        ["--target-mse", ",".join(f"{t:g}" for t in AUDIO_TARGETS)]
    src = [] if case["file"] is None else [str(case["file"])]
    cmd = [sys.executable, "-m", "inr", "fit", *src, "--out", str(out), "--quiet", *targets, *extra]
    if seconds is not None:
        cmd += ["--seconds", f"{seconds:g}"]
    if threads is not None:
        cmd += ["--threads", str(threads)]
    t0 = time.perf_counter()
    with tempfile.TemporaryFile("w+") as log:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True)
        _, status, usage = os.wait4(proc.pid, 0)   # this child's own peak RSS
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - t0
        log.seek(0)
        text = log.read()
    if proc.returncode != 0:
        return {"case": case["name"], "error": text.strip().splitlines()[-1:]}
    m = json.loads((out / "metrics.json").read_text())
    ttt = m.get("time_to_target") or {}
    row = {"case": case["name"], "kind": kind, "values": case["size"], "params": m["params"],
           "budget_s": seconds if seconds is not None else m["config"]["fit"]["train"]["seconds"],
           "reserved_s": m.get("seconds_reserved_for_writing", 0.0), "wall_s": wall, "train_s": m["seconds"], "eval_s": m["eval_seconds"],
           "evaluations": m["evaluations"], "steps": m["steps"], "s_per_step": m["seconds_per_step"],
           "peak_rss_MB": usage.ru_maxrss / 1024, "command": " ".join(cmd[1:])}
    if kind == "image":
        row.update(psnr=m["psnr"], ssim=m.get("ssim"))
    else:
        row.update(mse=m["mse"])
    for t in (IMAGE_TARGETS if kind == "image" else AUDIO_TARGETS):
        v = ttt.get(str(float(t)))
        row[f"t_{t:g}"] = v["seconds"] if v else None
    return row


def table(rows: list[dict]) -> str:
    f = lambda v, s: "n/a" if v is None else format(v, s)
    lines = ["| signal | values | params | budget (s) | wall (s) | train (s) | eval (s) | PSNR (dB) / MSE "
             "| s to 30 dB / 1e-4 | s to 40 dB / 1e-5 | peak RSS (MB) |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['case']} | failed: {' '.join(r['error'])} |||||||||")
            continue
        q = f(r.get("psnr"), ".2f") if r["kind"] == "image" else f(r.get("mse"), ".2e")
        t1, t2 = (IMAGE_TARGETS if r["kind"] == "image" else AUDIO_TARGETS)
        lines.append(f"| {r['case']} | {r['values']:,} | {r['params']:,} | {f(r['budget_s'], 'g')} | "
                     f"{r['wall_s']:.1f} | {r['train_s']:.1f} | {r['eval_s']:.1f} | {q} | "
                     f"{f(r[f't_{t1:g}'], '.1f')} | {f(r[f't_{t2:g}'], '.1f')} | {r['peak_rss_MB']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="result folder to create (must not exist)")
    p.add_argument("--sizes", default="256,512,1024,2048,4096",
                   help="image sides of the photo mosaics (comma-separated); cameraN: the cameraman at N x N "
                        "(camera512: inr fit's built-in)")
    p.add_argument("--audio", default="1,10,60", help="audio durations in seconds (comma-separated)")
    p.add_argument("--seconds", type=float, default=None, help="image budget (default: inr fit's, 60 s)")
    p.add_argument("--audio-seconds", type=float, default=120.0, help="audio budget (default: %(default)s)")
    p.add_argument("--threads", type=int, default=None, help="--threads of each fit (default: inr fit's auto)")
    p.add_argument("--set", action="append", default=[], metavar="FLAG", help="extra inr fit flag (repeatable)")
    p.add_argument("--params", default="auto", help="--params of each fit; several (comma-separated): each "
                   "signal fitted with each budget (the sweep --params auto was chosen from)")
    p.add_argument("--quick", action="store_true", help="a tiny setting: 32^2 image, 0.05 s audio, 1 s budgets")
    a = p.parse_args(argv)
    sides = [s.strip() for s in a.sizes.split(",") if s.strip()]
    budgets = [s.strip() for s in a.params.split(",") if s.strip()]
    clips = [float(s) for s in a.audio.split(",") if s.strip()]
    if a.quick:
        sides, clips, a.seconds, a.audio_seconds = ["32"], [0.05], 1.0, 1.0
    uptime = os.getloadavg()
    with RunFolder(a.out) as run, tempfile.TemporaryDirectory() as tmp:
        cases = write_inputs(Path(tmp), sides, clips)
        rows = []
        for c in cases:
            for params in budgets:
                budget = a.seconds if c["kind"] == "image" else a.audio_seconds
                slug = c.get("slug") or Path(c["file"]).stem
                slug += "" if len(budgets) == 1 else f"-p{params}"
                extra = a.set + ([] if params == "auto" else ["--params", params])
                row = run_fit(c, run.path / "fits" / slug, budget, a.threads, extra)
                rows.append(row)
                print(table([row]).splitlines()[-1], flush=True)
        settings = {"threads": a.threads, "load_before": uptime, "load_after": os.getloadavg(),
                    "cpus": os.cpu_count(), "quick": a.quick, "extra_flags": a.set}
        text = (f"`inr fit` defaults; budgets: images {a.seconds or 60:g} s, audio {a.audio_seconds:g} s; "
                f"threads {a.threads or 'auto'}; load average before {uptime[0]:.2f}, after "
                f"{settings['load_after'][0]:.2f} on {os.cpu_count()} CPUs.\n\n" + table(rows))
        (run.path / "table.md").write_text(text)
        run.write_json("metrics.json", {"settings": settings, "rows": rows})
    print(text)
    return 0 if all("error" not in r for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
