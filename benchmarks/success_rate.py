"""Many images, fixed budget: success rate to 30 / 40 dB (LRNN paper, Fig. 1) and batched throughput.

Study ``success`` (results/success_rate/): K gray images (scikit-image's gray set cut / resized to
``--size``, then tiles of its bundled photographs converted to gray; or the images in ``--folder``),
``--seeds`` seeds, each model at ``--params`` parameters with a fixed per-signal budget (``--steps``
and ``--seconds``).  Reports, per model: the share of (image, seed) fits whose training-batch PSNR
reached 30 and 40 dB within the budget (as ``inr fit`` times it), the mean time / step to each, the
mean final PSNR of the whole image, and the share whose final whole-image PSNR is above each target.
With ``--group-size 1`` (default) every signal is trained alone, so times are per signal.

Study ``throughput`` (results/batched_throughput/): the same images fitted (a) batched, all of one
size in one chunk, and (b) one after another in the same process, the two interleaved ``--repeats``
times so that both see the same machine load; reports signals per hour reaching 30 dB (median over
repeats) and the ratio, for each size in ``--throughput-sizes``.

Every fit goes through :func:`inr.batched.fit_many`, i.e. the same code as ``inr fit FOLDER/``.
PSNR is the standard 10 log10(1 / MSE) on [0, 1] (not SPDER's code's variant; docs/methods.md section 2).

    python benchmarks/success_rate.py --quick               # tiny, a few minutes at most
    python benchmarks/success_rate.py --images 24 --size 256 --seeds 3 --seconds 120
"""
from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

GRAY = ("camera", "moon", "coins", "text", "page", "clock", "brick", "grass", "gravel")
PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "motorcycle_left", "hubble_deep_field")


def image_set(k: int, size: int) -> list[tuple[str, np.ndarray]]:
    """``k`` distinct ``size x size`` uint8 gray images: the gray set (centre crop of the largest
    square, resized), then non-overlapping tiles of the photographs (gray), in a fixed order."""
    from skimage import data, transform
    from skimage.color import rgb2gray
    from skimage.util import img_as_ubyte

    def square(a):
        h, w = a.shape
        s = min(h, w)
        a = a[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        return img_as_ubyte(transform.resize(a, (size, size), anti_aliasing=True)) if s != size else a

    out = []
    for name in GRAY:
        if len(out) == k:
            return out
        try:
            out.append((name, square(img_as_ubyte(getattr(data, name)()))))
        except Exception:  # an image this scikit-image version lacks (or cannot fetch offline)
            continue
    tiles = []
    for name in PHOTOS:
        try:
            a = getattr(data, name)()
        except Exception:
            continue
        g = img_as_ubyte(rgb2gray(a[..., :3]) if a.ndim == 3 else a)
        if min(g.shape) < size:
            tiles.append((f"{name}-0-0", square(g)))
            continue
        for i in range(0, g.shape[0] - size + 1, size):
            for j in range(0, g.shape[1] - size + 1, size):
                tiles.append((f"{name}-{i}-{j}", g[i:i + size, j:j + size]))
    # interleave the photographs so a small k still mixes sources
    by_src: dict = {}
    for n, t in tiles:
        by_src.setdefault(n.split("-")[0], []).append((n, t))
    while len(out) < k and any(by_src.values()):
        for src in list(by_src):
            if by_src[src] and len(out) < k:
                out.append(by_src[src].pop(0))
    if len(out) < k:
        raise SystemExit(f"only {len(out)} distinct {size}x{size} images available; use --images {len(out)} "
                         f"or --folder")
    return out


def write_images(images, folder: Path) -> list[Path]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i, (name, a) in enumerate(images):
        p = folder / f"{i:03d}-{name}.png"
        Image.fromarray(a).save(p)
        paths.append(p)
    return paths


def _fit(paths, out, a, model, seed, group_size, steps, seconds, engine="auto"):
    from inr.batched import fit_many
    from inr.fitting import FitConfig, with_overrides

    cfg = with_overrides(FitConfig(), {"model": model, "params": a.params, "steps": steps, "seconds": seconds,
                                       "batch": a.batch, "targets": (30.0, 40.0), "device": a.device, "seed": seed,
                                       "quiet": True})
    return fit_many(paths, cfg, out, group_size, engine)


# ----------------------------------------------------------------------------------------------


def success_study(a, paths, root: Path) -> dict:
    runs = root / "runs"
    per_model = {}
    for model in a.models:
        rows = []
        for seed in range(a.seeds):
            out = runs / f"{model}-seed{seed}"
            s = _fit(paths, out, a, model, seed, a.group_size, a.steps, a.seconds)
            rows += [{**r, "seed": seed} for r in s["results"]]
            print(f"  {model} seed {seed}: mean PSNR {s['aggregate'].get('mean_psnr', float('nan')):.2f} dB",
                  flush=True)
        agg = {"fits": len(rows), "params": rows[0]["params"] if rows else None,
               "mean_final_psnr": float(np.mean([r["psnr"] for r in rows])) if rows else None,
               "mean_seconds": float(np.mean([r["seconds"] for r in rows])) if rows else None}
        for t in ("30.0", "40.0"):
            hits = [r["time_to_target"][t] for r in rows if r["time_to_target"].get(t)]
            agg[f"success_{t}"] = len(hits) / len(rows) if rows else None
            agg[f"mean_seconds_to_{t}"] = float(np.mean([h["seconds"] for h in hits])) if hits else None
            agg[f"mean_steps_to_{t}"] = float(np.mean([h["step"] for h in hits])) if hits else None
            agg[f"final_above_{t}"] = float(np.mean([r["psnr"] >= float(t) for r in rows])) if rows else None
        per_model[model] = {"aggregate": agg, "fits": rows}
    return per_model


def success_table(res: dict, a) -> str:
    lines = [f"Success rate: {a.images} images of {a.size}x{a.size} x {a.seeds} seeds, ~{a.params:,} params, "
             f"budget {a.steps} steps / {a.seconds} s per signal, batch {a.batch}, device {a.device}.", "",
             "| model | params | reached 30 dB | mean s (steps) to 30 | reached 40 dB | mean s (steps) to 40 | "
             "final PSNR (mean) | final >= 30 / 40 |", "|---|---|---|---|---|---|---|---|"]

    def tt(g, t):
        s = g[f"mean_seconds_to_{t}"]
        return "-" if s is None else f"{s:.1f} ({g[f'mean_steps_to_{t}']:.0f})"

    for m, r in res.items():
        g = r["aggregate"]
        lines.append(f"| {m} | {g['params']:,} | {100 * g['success_30.0']:.1f}% | {tt(g, '30.0')} | "
                     f"{100 * g['success_40.0']:.1f}% | {tt(g, '40.0')} | {g['mean_final_psnr']:.2f} | "
                     f"{100 * g['final_above_30.0']:.0f}% / {100 * g['final_above_40.0']:.0f}% |")
    lines += ["", "Reached = the training-batch PSNR crossed the target within the budget (as `inr fit` times "
                  "it); final = PSNR of the whole reconstruction. Standard PSNR on [0, 1]."]
    return "\n".join(lines) + "\n"


def success_plot(res: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 3.6))
    FigureCanvasAgg(fig)
    ax1, ax2, ax3 = fig.subplots(1, 3)
    models = list(res)
    x = np.arange(len(models))
    for k, t in enumerate(("30.0", "40.0")):
        ax1.bar(x + (k - 0.5) * 0.38, [100 * res[m]["aggregate"][f"success_{t}"] for m in models], 0.38,
                label=f"{float(t):.0f} dB")
        ax2.bar(x + (k - 0.5) * 0.38, [res[m]["aggregate"][f"mean_seconds_to_{t}"] or 0 for m in models], 0.38,
                label=f"{float(t):.0f} dB")
    for ax, yl in ((ax1, "success rate (%)"), (ax2, "mean seconds to target (reached only)")):
        ax.set_xticks(x, models)
        ax.set_ylabel(yl)
        ax.legend()
        ax.grid(alpha=0.3, axis="y")
    ax3.boxplot([[r["psnr"] for r in res[m]["fits"]] for m in models])
    ax3.set_xticks(x + 1, models)
    ax3.set_ylabel("final PSNR (dB)")
    ax3.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(path, dpi=110)


# ----------------------------------------------------------------------------------------------


def throughput_study(a, tmp: Path) -> dict:
    out = {}
    for size, count in a.throughput_sizes:
        paths = write_images(image_set(count, size), tmp / f"tp{size}")
        for model in a.throughput_models:
            modes = [f"batched-{e}" for e in a.engines] + ["sequential"]
            times = {m: [] for m in modes}
            reached = {}
            for rep in range(a.repeats):
                k = rep % len(modes)   # rotate the order so no mode always runs first
                for mode in modes[k:] + modes[:k]:
                    d = tmp / f"tp-{size}-{model}-{mode}-{rep}"
                    t0 = time.perf_counter()
                    if mode != "sequential":
                        s = _fit(paths, d, a, model, 0, len(paths), a.throughput_steps, None, mode.split("-")[1])
                        hits = [r["time_to_target"]["30.0"] is not None for r in s["results"]]
                    else:
                        hits = []
                        for i, p in enumerate(paths):
                            s = _fit([p], d / str(i), a, model, 0, 1, a.throughput_steps, None)
                            hits += [r["time_to_target"]["30.0"] is not None for r in s["results"]]
                    times[mode].append(time.perf_counter() - t0)
                    reached[mode] = sum(hits)
                    shutil.rmtree(d, ignore_errors=True)
                    print(f"  {size}x{size} {model} {mode} rep {rep}: {times[mode][-1]:.1f} s, "
                          f"{reached[mode]}/{len(paths)} reached 30 dB", flush=True)
            med = {k: statistics.median(v) for k, v in times.items()}
            per_hour = {k: reached[k] * 3600.0 / med[k] for k in med}
            out[f"{size}x{size}/{model}"] = {
                "size": size, "images": len(paths), "model": model, "steps": a.throughput_steps,
                "seconds": times, "median_seconds": med, "reached_30db": reached,
                "signals_per_hour_30db": per_hour,
                "fits_per_hour": {k: len(paths) * 3600.0 / med[k] for k in med},
                "speedup_over_sequential": {k: med["sequential"] / med[k] for k in med if k != "sequential"}}
    return out


def throughput_table(res: dict, a) -> str:
    lines = [f"Batched vs one after another, same process, {a.throughput_steps} steps per signal, ~{a.params:,} "
             f"params, batch {a.batch}, device {a.device}; medians over {a.repeats} interleaved repeats.", "",
             "| images | model | mode | reached 30 dB | median s | signals/h to 30 dB | fits/h | "
             "speed-up vs sequential |", "|---|---|---|---|---|---|---|---|"]
    for r in res.values():
        for m in r["median_seconds"]:
            sp = r["speedup_over_sequential"].get(m)
            lines.append(f"| {r['images']} x {r['size']}x{r['size']} | {r['model']} | {m} | {r['reached_30db'][m]} | "
                         f"{r['median_seconds'][m]:.1f} | {r['signals_per_hour_30db'][m]:.0f} | "
                         f"{r['fits_per_hour'][m]:.0f} | {'-' if sp is None else '%.2fx' % sp} |")
    lines += ["", "batched-stacked: stacked weights (vmap / fused wide LRNN layer); batched-loop: the models one "
                  "after another inside each step; sequential: one `fit_many` call per image. Wall time includes "
                  "loading, building, training, prediction and writing each signal's run folder."]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------


def _size_count(s):
    try:
        size, count = (int(v) for v in s.split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected SIZExCOUNT (e.g. 64x16), got {s!r}") from None
    if size < 4 or count < 1:
        raise argparse.ArgumentTypeError(f"SIZExCOUNT needs size >= 4 and count >= 1, got {s!r}")
    return size, count


def _csv(s):
    return [x.strip() for x in s.split(",") if x.strip()]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--study", choices=("success", "throughput", "both"), default="both")
    p.add_argument("--quick", action="store_true",
                   help="tiny setting (CI): 2 images of 12x12, 1 seed, 20 steps, 1,500 params")
    p.add_argument("--images", type=int, default=24, help="K images (default: %(default)s)")
    p.add_argument("--size", type=int, default=256, help="image side (default: %(default)s)")
    p.add_argument("--folder", default=None, help="use the images in this folder instead of scikit-image's")
    p.add_argument("--seeds", type=int, default=3, help="seeds per image (default: %(default)s)")
    p.add_argument("--models", type=_csv, default=["siren", "spder", "lrnn-spder"],
                   help="comma-separated (default: siren,spder,lrnn-spder)")
    p.add_argument("--params", type=int, default=200_000, help="parameter budget (default: %(default)s)")
    p.add_argument("--steps", type=int, default=2000, help="step budget per signal (default: %(default)s)")
    p.add_argument("--seconds", type=float, default=120.0, help="wall budget per signal (default: %(default)s)")
    p.add_argument("--batch", type=lambda s: None if s == "full" else int(s), default=8192,
                   help="points per step, or 'full' (default: %(default)s)")
    p.add_argument("--group-size", type=int, default=1,
                   help="signals trained together in the success study; >1 makes times per chunk (default: 1)")
    p.add_argument("--throughput-sizes", type=lambda s: [_size_count(x) for x in _csv(s)],
                   default=[(64, 16), (256, 4)], help="SIZExCOUNT list (default: 64x16,256x4)")
    p.add_argument("--throughput-models", type=_csv, default=["siren", "lrnn-spder"])
    p.add_argument("--engines", type=_csv, default=["stacked", "loop"],
                   help="batched engines to time against sequential (default: stacked,loop)")
    p.add_argument("--throughput-steps", type=int, default=300, help="steps per signal (default: %(default)s)")
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats (default: %(default)s)")
    p.add_argument("--device", default="cpu", help="cpu, cuda or auto (default: %(default)s)")
    p.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: %(default)s)")
    p.add_argument("--out", default="results", help="results root (default: %(default)s)")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.size, a.seeds, a.steps, a.seconds, a.params = 2, 12, 1, 20, 20.0, 1500
        a.models, a.batch, a.throughput_sizes = ["siren", "lrnn-spder"], None, [(12, 2)]
        a.throughput_models, a.throughput_steps, a.repeats = ["siren"], 10, 1
    import torch

    from inr import batched, runfiles

    torch.set_num_threads(a.threads)
    machine = {"device": a.device, "threads": a.threads, "cpus": os.cpu_count(),
               "load_average_at_start": os.getloadavg(), "versions": runfiles.versions()}
    from inr.runs import RunFolder

    # each study's folder is refused now if it exists (before any work), built under a hidden name and
    # renamed when complete: an earlier result is never overwritten
    folders = {s: RunFolder(Path(a.out) / s) for s, on in (("success_rate", a.study in ("success", "both")),
                                                           ("batched_throughput", a.study in ("throughput", "both")))
               if on}
    with tempfile.TemporaryDirectory(prefix="success-rate-") as tmp:
        tmp = Path(tmp)
        if "success_rate" in folders:
            with folders["success_rate"] as run:
                root = run.path
                if a.folder:
                    paths = batched.list_signal_files([a.folder])
                    a.images = len(paths)
                else:
                    paths = write_images(image_set(a.images, a.size), tmp / "images")
                res = success_study(a, paths, root)
                table = success_table(res, a)
                success_plot(res, root / "success_rate.png")
                runfiles.write_json({"config": vars(a), "machine": machine,
                                     "models": {m: r["aggregate"] for m, r in res.items()},
                                     "fits": {m: r["fits"] for m, r in res.items()}}, root / "metrics.json")
                (root / "table.md").write_text(table)
                print(table)
        if "batched_throughput" in folders:
            with folders["batched_throughput"] as run:
                root = run.path
                res = throughput_study(a, tmp)
                table = throughput_table(res, a)
                runfiles.write_json({"config": vars(a), "machine": machine, "results": res}, root / "metrics.json")
                (root / "table.md").write_text(table)
                print(table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
