"""Image-fitting benchmark: every registry model (+ the peer library siren-pytorch) at the same parameter
budget and the same wall budget, on cameraman and four other scikit-image images (gray, 256 x 256).

    python benchmarks/image_fit.py                      # full study (about 8 models x 5 images x --seconds)
    python benchmarks/image_fit.py --images camera --seconds 30
    python benchmarks/image_fit.py --quick              # seconds-long smoke run

Writes results/image_fit/: table.md, metrics.json (summary + every run), psnr_vs_time.png, and the run
folders (reconstructions, error maps).  PSNR is the standard 10 log10(1 / MSE) on [0, 1] images.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import fitbench  # noqa: E402
from inr.runs import RunFolder  # noqa: E402

IMAGES = ("camera", "moon", "coins", "brick", "gravel")
MODELS = ("hash", "siren", "spder", "gauss", "wire", "relu-pe", "lrnn-siren", "lrnn-spder", fitbench.PEER)
# Learning rate and pixel batch per model: each family's spec for images (fitbench.settings), the peer's
# own; override with --lr MODEL=VALUE / --batch.


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", default=",".join(IMAGES), help="comma list of scikit-image data names")
    p.add_argument("--models", default=",".join(MODELS))
    p.add_argument("--size", type=int, default=256)
    p.add_argument("--params", type=int, default=200_000)
    p.add_argument("--seconds", type=float, default=90.0, help="wall budget per run (training time)")
    p.add_argument("--steps", type=int, default=100_000, help="step cap per run")
    p.add_argument("--seeds", default="0")
    p.add_argument("--lr", action="append", default=[], metavar="MODEL=LR")
    p.add_argument("--batch", type=int, default=None, help="pixel batch for every model (default: per model)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default="results/image_fit")
    p.add_argument("--eval-every", type=int, default=25,
                   help="whole-signal evaluation cadence in steps (off the clock); time to target uses it")
    p.add_argument("--quick", action="store_true", help="tiny smoke setting (32x32, 2 models, 2 s)")
    a = p.parse_args(argv)
    if a.quick:
        a.images, a.models, a.size, a.params, a.seconds, a.steps = "camera", "siren,lrnn-spder", 32, 5000, 2.0, 20
    lrs = {k: float(v) for k, v in (s.split("=", 1) for s in a.lr)}
    # refused now if it exists (before any work); built under a hidden name, renamed when complete
    run = RunFolder(a.out)
    out = run.path
    targets = (30, 35, 40)
    specs = []
    for seed in (int(s) for s in a.seeds.split(",")):
        for image in a.images.split(","):
            for model in a.models.split(","):
                lr, batch = fitbench.settings(model, "image")
                specs.append({"model": model, "signal": {"builtin": image, "size": a.size}, "params": a.params,
                              "seconds": a.seconds, "steps": a.steps, "lr": lrs.get(model, lr),
                              "batch": a.batch or batch, "targets": list(targets), "seed": seed,
                              "eval_every": a.eval_every,
                              "threads": a.threads, "out": str(out / "runs" / f"{image}-{model}-s{seed}")})
    header = (f"Images: {a.images} ({a.size}x{a.size}, gray); {a.params} parameters; {a.seconds:g} s wall budget "
              f"per run; seeds {a.seeds}; {a.threads} threads. PSNR = 10 log10(1/MSE) on [0, 1] (final iterate, "
              f"whole image); success = share of runs whose whole-image PSNR (evaluated every {a.eval_every} steps, off the clock) reached the target; seconds to a target from those evaluations.\n\n")
    with run:
        fitbench.report(specs, targets, "image", header, out, vars(a), "psnr_vs_time.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
