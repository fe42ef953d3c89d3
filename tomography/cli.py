"""``python -m tomography recon IMAGE|--phantom``: sparse-view CT with an INR beside FBP, SART and TV.

Writes a run folder (reconstruction.png, sinogram.png, comparison.png, metrics.json, config.json,
history.csv, model.pt).  User errors print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import os
import time

import numpy as np

from inr.cliutil import (EXIT_USAGE, Parser, add_common, add_lbfgs, add_version, apply_threads, lbfgs_options, number,
                          parse_args, run_main)
from inr.runfiles import versions
from inr.runs import RunFolder
from inr.errors import InputError

MIN_SIZE = 8       # SSIM (7 x 7 window) and a meaningful scan need at least 8 x 8 pixels
MAX_SIZE = 8192


_Parser = Parser


def _number(kind, name, low=None, allow_none=False):
    """A finite number > ``low`` (or any finite number when ``low`` is None)."""
    return number(kind, name, low, low_open=True, allow_none=allow_none)


def _size(s):
    try:
        parts = [int(p) for p in s.lower().split("x")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size must be N or HxW, got {s!r}") from None
    if len(parts) == 1:
        parts = parts * 2
    if len(parts) != 2 or min(parts) < MIN_SIZE or max(parts) > MAX_SIZE:
        raise argparse.ArgumentTypeError(f"--size must be N or HxW with sides from {MIN_SIZE} to {MAX_SIZE} "
                                         f"(SSIM needs a 7 x 7 window), got {s!r}")
    return tuple(parts)


def build_parser() -> argparse.ArgumentParser:
    from inr.models import MODELS

    from .baselines import FILTERS
    from .phantoms import PHANTOMS
    from .recon import DEFAULT_MODEL, DEFAULT_TV, OUTPUTS

    p = _Parser(prog="python -m tomography", description="Sparse-view parallel-beam CT reconstruction.")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("recon", help="simulate a scan of an image and reconstruct it (INR, FBP, SART, TV)")
    r.add_argument("image", nargs="?", help="image file read by inr.signals (grayscale or RGB, averaged to gray; 8/16-bit scaled by "
                        "the format maximum to [0, 1], float taken as is)")
    r.add_argument("--phantom", nargs="?", const="shepp", default=None, choices=PHANTOMS,
                   help="use a built-in phantom instead of a file: shepp (scikit-image's Shepp-Logan, also what "
                        "--phantom alone gives) or thorax (tomography.phantoms.thorax: analytic chest slice)")
    r.add_argument("--size", type=_size, default=None,
                   help="resize to N x N or HxW (default: 256 for --phantom, the file's own size otherwise)")
    r.add_argument("--views", type=_number(int, "--views", 0), default=100, help="projection angles (default 100)")
    r.add_argument("--angle-range", type=_number(float, "--angle-range", 0), default=180.0,
                   help="angles cover [0, RANGE) degrees, the end excluded (default 180)")
    r.add_argument("--full-field", action="store_true",
                   help="detector covers the image diagonal (skimage circle=False); default: the inscribed "
                        "circle (circle=True, detector = image side)")
    r.add_argument("--photons", type=_number(float, "--photons", 0), default=None,
                   help="incident photons per ray I0 for Poisson noise (default: noiseless)")
    r.add_argument("--readout-noise", type=_number(float, "--readout-noise", None), default=0.0,
                   help="Gaussian readout noise std in detector counts (needs --photons)")
    r.add_argument("--peak-attenuation", type=_number(float, "--peak-attenuation", 0), default=3.0,
                   help="attenuation exp(-A) of the most attenuating ray sets mu (default 3)")
    r.add_argument("--model", choices=MODELS, default=DEFAULT_MODEL,
                   help=f"INR from the registry (default {DEFAULT_MODEL}: the fastest family on a CPU, with its "
                        f"CT defaults, docs/methods.md s.4)")
    r.add_argument("--params", type=_number(int, "--params", 0), default=180_000,
                   help="parameter budget picking the width (default 180000)")
    r.add_argument("--steps", type=_number(int, "--steps", 0), default=5000, help="Adam steps (default 5000)")
    r.add_argument("--seconds", type=_number(float, "--seconds", 0, allow_none=True), default=None,
                   help="wall-clock budget for the INR fit (default: none)")
    r.add_argument("--lr", type=_number(float, "--lr", 0), default=None,
                   help="learning rate, decayed exponentially to 0.1x (default: per model, docs/methods.md s.4)")
    r.add_argument("--inr-tv", type=_number(float, "--inr-tv", None, allow_none=True), default=None,
                   help="weight of a smoothed total-variation term on the INR image added to its sinogram loss "
                        "(tomography.recon.tv_penalty; default: per model, DEFAULT_TV: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_TV.items()) + ", others 0)")
    r.add_argument("--view-batch", type=_number(int, "--view-batch", 0, allow_none=True), default=None,
                   help="project only this many random views per INR step (unbiased stochastic sinogram loss; "
                        "default: all views)")
    r.add_argument("--coarse-to-fine", type=_number(float, "--coarse-to-fine", None), default=0.0, metavar="FRAC",
                   help="hash-grid encodings: switch the finer levels on gradually over this fraction of the budget "
                        "(tomography.recon.LevelSchedule; default 0: all levels from the start)")
    r.add_argument("--output", choices=OUTPUTS, default="linear", help="INR output map (default linear)")
    r.add_argument("--no-mask", action="store_true",
                   help="model every pixel, also those no ray passes through (default: with the disc geometry "
                        "they are 0 and not modelled, as FBP and SART do)")
    r.add_argument("--fbp-filter", choices=FILTERS, default="ramp", help="FBP filter (default ramp)")
    r.add_argument("--sart-iterations", type=_number(int, "--sart-iterations", 0), default=10,
                   help="SART sweeps (default 10)")
    r.add_argument("--tv-weight", type=_number(float, "--tv-weight", None), default=3e-4,
                   help="TV weight (see tomography.baselines.tv_reconstruct; default 3e-4)")
    r.add_argument("--tv-iterations", type=_number(int, "--tv-iterations", 0), default=300,
                   help="Chambolle-Pock iterations (default 300)")
    add_lbfgs(r, full_batch_help="the full sinogram (every view)")
    add_common(r, seed_help="seeds noise, initialisation and everything else",
               out_help="run folder to create, must not exist (default runs/ct-<image>-<model>-<views>v)")
    r.add_argument("--checkpoint-every", type=number(int, "--checkpoint-every", 0), default=0, metavar="N",
                   help="checkpoint the INR fit every N steps (kept in the hidden staging folder after an "
                        "interruption so --resume can continue; 0: off)")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at --out from its last checkpoint (same options)")
    return p


def save_png(path, array, cmap="gray", vmin=0.0, vmax=1.0) -> None:
    from matplotlib.image import imsave  # no pyplot, no global backend switch

    imsave(path, np.asarray(array), cmap=cmap, vmin=vmin, vmax=vmax, format="png")


def comparison_figure(path, truth, recons: dict, metrics: dict, title: str = "") -> None:
    """Truth and each reconstruction (top) with absolute error maps (bottom)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    names = list(recons)
    fig = Figure(figsize=(2.6 * (len(names) + 1), 6.4))
    FigureCanvasAgg(fig)
    ax = fig.subplots(2, len(names) + 1, squeeze=False)
    ax[0, 0].imshow(truth, cmap="gray", vmin=0, vmax=1)
    ax[0, 0].set_title("truth")
    ax[1, 0].axis("off")
    for k, n in enumerate(names, 1):
        ax[0, k].imshow(np.clip(recons[n], 0, 1), cmap="gray", vmin=0, vmax=1)
        m = metrics.get(n, {})
        ax[0, k].set_title(f"{n}\n{m.get('psnr', float('nan')):.2f} dB / {m.get('ssim', float('nan')):.3f}",
                           fontsize=9)
        ax[1, k].imshow(np.abs(np.clip(recons[n], 0, 1) - truth), cmap="inferno", vmin=0, vmax=0.25)
        ax[1, k].set_title("|error| (0..0.25)", fontsize=8)
    for a in ax.flat:
        a.set_xticks([])
        a.set_yticks([])
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def _score(rec, truth) -> dict:
    from inr.metrics import psnr, ssim

    return {"psnr": round(psnr(rec, truth, data_range=1.0), 3), "ssim": round(ssim(rec, truth, data_range=1.0), 4)}


def run_baselines(scan, fbp_filter="ramp", sart_iterations=10, tv_weight=3e-4, tv_iterations=300, device="cpu"):
    """FBP, SART and TV reconstructions of ``scan`` with their metrics and wall seconds."""
    from .baselines import fbp, sart, tv_reconstruct

    recons, metrics = {}, {}
    s = scan.measured.numpy()
    jobs = {"fbp": lambda: fbp(s, scan.geometry, fbp_filter),
            "sart": lambda: sart(s, scan.geometry, sart_iterations),
            "tv": lambda: tv_reconstruct(s, scan.geometry, tv_weight, tv_iterations, device=device)}
    for name, job in jobs.items():
        t0 = time.perf_counter()
        recons[name] = job()
        metrics[name] = {**_score(recons[name], scan.truth), "seconds": round(time.perf_counter() - t0, 3)}
    metrics["fbp"]["filter"] = fbp_filter
    metrics["sart"]["iterations"] = sart_iterations
    metrics["tv"].update({"weight": tv_weight, "iterations": tv_iterations})
    return recons, metrics


def recon(args) -> dict:
    import torch

    from inr.models import count_params
    from inr.train import resolve_device

    from .phantoms import make as make_phantom
    from .recon import DEFAULT_TV, load_image, reconstruct_inr, simulate

    if bool(args.phantom) == bool(args.image):
        raise InputError("give exactly one of IMAGE or --phantom")
    if args.readout_noise and args.photons is None:
        raise InputError("--readout-noise is a standard deviation in detector counts and needs --photons")
    name = {"shepp": "shepp-logan", "thorax": "thorax"}.get(args.phantom) if args.phantom else os.path.splitext(os.path.basename(args.image))[0]
    out = args.out or os.path.join("runs", f"ct-{name}-{args.model}-{args.views}v")
    run = RunFolder(out, resume=args.resume)   # refuses an existing --out before any work
    truth = make_phantom(args.phantom, args.size or (256, 256)) if args.phantom else load_image(args.image, args.size)
    if min(truth.shape) < MIN_SIZE:
        raise InputError(f"the image is {truth.shape[0]}x{truth.shape[1]} pixels; CT reconstruction here needs "
                         f"at least {MIN_SIZE}x{MIN_SIZE} (use --size)")
    device = resolve_device(args.device)
    apply_threads(args.threads)
    inr_tv = DEFAULT_TV.get(args.model, 0.0) if args.inr_tv is None else args.inr_tv
    with run:
        tmp = str(run.path)
        scan = simulate(truth, args.views, args.angle_range, not args.full_field, args.photons, args.readout_noise,
                        args.peak_attenuation, seed=args.seed)
        recons, metrics = run_baselines(scan, args.fbp_filter, args.sart_iterations, args.tv_weight,
                                        args.tv_iterations, device=device)
        image, result, net = reconstruct_inr(scan, args.model, args.params, args.steps, args.seconds, args.lr,
                                             args.output, args.seed, device, args.quiet,
                                             mask_outside=not args.no_mask, checkpoint_path=str(run.checkpoint),
                                             checkpoint_every=args.checkpoint_every, resume=args.resume,
                                             tv=inr_tv, view_batch=args.view_batch,
                                             coarse_to_fine=args.coarse_to_fine, lbfgs=lbfgs_options(args))
        recons[args.model] = image
        oracle = max((h.get("oracle_best_psnr", -np.inf) for h in result.history), default=None)
        metrics[args.model] = {**_score(image, truth), "seconds": round(result.seconds, 3), "steps": result.steps,
                               "params": count_params(net), "stopped_by": result.stopped_by,
                               "oracle_best_psnr (oracle selection, not the reported value)": oracle,
                               "divergence_events": len(result.events), "inr_tv": inr_tv}
        config = {"command": "recon", "image": args.image or {"shepp": "skimage.data.shepp_logan_phantom",
                                                             "thorax": "tomography.phantoms.thorax"}[args.phantom], "size": list(truth.shape),
                  "views": args.views, "angle_range": args.angle_range, "circle": not args.full_field,
                  "mask_outside": not args.no_mask,
                  "photons": args.photons, "readout_noise": args.readout_noise, "mu": scan.mu,
                  "peak_attenuation": args.peak_attenuation, "model": net.model.config, "params": args.params,
                  "steps": args.steps, "seconds": args.seconds,
                  "lr": args.lr, "inr_tv": inr_tv, "view_batch": args.view_batch,
                  "coarse_to_fine": args.coarse_to_fine,
                  "output": args.output, "fbp_filter": args.fbp_filter,
                  "sart_iterations": args.sart_iterations, "tv_weight": args.tv_weight,
                  "tv_iterations": args.tv_iterations, "seed": args.seed, "device": str(device),
                  "threads": torch.get_num_threads(),
                  "versions": versions("scipy", "scikit-image")}
        summary = {"note": "standard PSNR 10 log10(1/MSE) and scikit-image SSIM, data_range 1, on the FINAL "
                           "iterate; reconstructions clipped to [0, 1] before scoring",
                   "metrics": metrics, "fit": result.summary(), "seed": args.seed, "device": str(device),
                   "versions": config["versions"]}
        save_png(os.path.join(tmp, "reconstruction.png"), np.clip(image, 0, 1))
        sino = scan.measured.numpy()
        save_png(os.path.join(tmp, "sinogram.png"), sino, vmin=float(sino.min()), vmax=float(sino.max()))
        comparison_figure(os.path.join(tmp, "comparison.png"), truth, recons, metrics,
                          f"{name} {truth.shape[0]}x{truth.shape[1]}, {args.views} views")
        np.save(os.path.join(tmp, "reconstruction.npy"), image)
        result.write_history(os.path.join(tmp, "history.csv"))
        run.save_torch("model.pt", net.model.state_dict())
        run.write_json("config.json", config)
        run.write_json("metrics.json", summary)  # written last: marks a complete run
    return {"out": os.path.abspath(out), "metrics": metrics}


def main(argv=None) -> int:
    parser = build_parser()
    args = parse_args(parser, argv)
    if isinstance(args, int):   # --help / --version (0) or a usage error (2), already reported
        return args

    def command() -> int:
        res = recon(args)
        rows = [f"{k:>12s}: {v['psnr']:6.2f} dB  SSIM {v['ssim']:.4f}  {v['seconds']:8.1f} s"
                for k, v in res["metrics"].items()]
        print("\n".join(rows))
        print(f"run folder: {res['out']}")
        return 0
    return run_main(parser.prog, command)
