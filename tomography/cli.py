"""``python -m tomography``: sparse-view CT with an INR beside FBP, SART and TV.

- ``recon IMAGE|--phantom``: simulate a scan of an image and reconstruct it;
- ``recon --sinogram FILE [--angles FILE] [--truth FILE]``: reconstruct a measured sinogram (npy, TIFF,
  16-bit PNG; one row per angle), also raw transmission data (``--raw --flat F --dark D``);
- ``simulate IMAGE|--phantom --out DIR``: write a simulated scan as files, to try the file path.

Parallel or fan beam (``--geometry fan``).  ``recon`` is parse -> :class:`tomography.config.CTConfig` /
:class:`~tomography.config.ScanSpec` (every option checked) -> scan -> :func:`tomography.reconstruct`
-> run folder (reconstruction.png/.npy, sinogram.png, comparison.png with the truth, metrics.json,
config.json, history.csv, model.pt).  User errors print one line on stderr and exit with code 2.
"""
from __future__ import annotations

import argparse
import math
import os
import shlex

import numpy as np

from inr.cliutil import (Parser, add_common, add_config_options, add_lbfgs, apply_config_file, apply_sets, add_version, apply_threads, lbfgs_options, number,
                          parse_args, run_main)
from inr.errors import InputError
from inr.runfiles import versions
from inr.runs import RunFolder
from inr.errors import InputError

from .config import MAX_SIZE, MIN_SIZE, CTConfig, ScanSpec
from .plots import comparison_figure, save_png  # noqa: F401  (re-exported for benchmarks/ct.py)

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


def _scan_options(r, simulate_only: bool = False) -> None:
    """Image, geometry and noise options shared by ``recon`` and ``simulate``."""
    from .phantoms import PHANTOMS

    r.add_argument("image", nargs="?", help="image file read by inr.signals (grayscale or RGB, averaged to gray; "
                        "8/16-bit scaled by the format maximum to [0, 1], float taken as is)")
    r.add_argument("--phantom", nargs="?", const="shepp", default=None, choices=PHANTOMS,
                   help="use a built-in phantom instead of a file: shepp (scikit-image's Shepp-Logan, also what "
                        "--phantom alone gives) or thorax (tomography.phantoms.thorax: analytic chest slice)")
    r.add_argument("--size", type=_size, default=None,
                   help="image / reconstruction grid N x N or HxW (default: 256 for --phantom, the file's own size "
                        "otherwise; with --sinogram the detector width for parallel beam, required for fan beam)")
    r.add_argument("--views", type=_number(int, "--views", 0), default=None,
                   help="projection angles (default 100; with --sinogram: its rows)")
    r.add_argument("--angle-range", type=_number(float, "--angle-range", 0), default=None,
                   help="angles cover [0, RANGE) degrees, the end excluded (default 180 parallel, 360 fan)")
    r.add_argument("--full-field", action="store_true",
                   help="detector covers the image diagonal (skimage circle=False); default: the inscribed "
                        "circle (circle=True, detector = image side)")
    g = r.add_argument_group("geometry (lengths in image pixels)")
    g.add_argument("--geometry", choices=("parallel", "fan"), default="parallel",
                   help="parallel beam (scikit-image's radon) or flat-detector fan beam")
    g.add_argument("--source-distance", type=_number(float, "--source-distance", 0), default=None,
                   help="fan: source to rotation centre (default 2 x the larger image side)")
    g.add_argument("--detector-distance", type=_number(float, "--detector-distance", 0), default=None,
                   help="fan: source to detector (default 2 x --source-distance)")
    g.add_argument("--detector-pitch", type=_number(float, "--detector-pitch", 0), default=None,
                   help="fan: detector bin width (default: the magnification, one image pixel at the centre)")
    g.add_argument("--detector-offset", type=_number(float, "--detector-offset", None), default=0.0,
                   help="fan: shift of the detector centre along the detector (default 0)")
    if simulate_only:
        g.add_argument("--detectors", type=_number(int, "--detectors", 1), default=None,
                       help="fan: detector bins (default: enough to cover the scanned disc)")
    r.add_argument("--photons", type=_number(float, "--photons", 0), default=None,
                   help="incident photons per ray I0 for Poisson noise (default: noiseless)")
    r.add_argument("--readout-noise", type=_number(float, "--readout-noise", None), default=0.0,
                   help="Gaussian readout noise std in detector counts (needs --photons)")
    r.add_argument("--peak-attenuation", type=_number(float, "--peak-attenuation", 0), default=3.0,
                   help="attenuation exp(-A) of the most attenuating ray sets mu (default 3)")


def build_parser() -> argparse.ArgumentParser:
    from inr.models import MODELS

    from .baselines import FILTERS
    from inr.models import names, spec

    from .recon import DEFAULT_MODEL, OUTPUTS

    p = _Parser(prog="python -m tomography", description="Sparse-view CT reconstruction (parallel or fan beam).")
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=_Parser)
    r = sub.add_parser("recon", help="reconstruct a scan (simulated from an image, or --sinogram FILE) with an INR, FBP, SART and TV")
    _scan_options(r)
    f = r.add_argument_group("measured scans from files (tomography.io: .npy, TIFF, 16-bit PNG)")
    f.add_argument("--sinogram", default=None, metavar="FILE",
                   help="reconstruct this sinogram (one row per angle) instead of simulating one")
    f.add_argument("--angles", default=None, metavar="FILE",
                   help="its angles in degrees, one per row (npy, TIFF or text; default: --views/--angle-range)")
    f.add_argument("--truth", default=None, metavar="FILE",
                   help="ground-truth image (npy/TIFF/PNG, the grid's shape) to score PSNR/SSIM against")
    f.add_argument("--raw", action="store_true",
                   help="the sinogram holds transmission counts: line integrals = -log((I - dark) / (flat - dark)) "
                        "/ mu")
    f.add_argument("--flat", default=None, metavar="FILE", help="--raw: flat field (one value, one row or full)")
    f.add_argument("--dark", default=None, metavar="FILE", help="--raw: dark field (default 0)")
    f.add_argument("--mu", type=_number(float, "--mu", 0), default=1.0,
                   help="--raw: attenuation per image unit per pixel (the log is divided by it; default 1)")
    r.add_argument("--box", nargs=2, type=float, default=None, metavar=("LOW", "HIGH"),
                   help="known value range of the image: SART/TV clip to it, scores clip to it (default 0 1 for "
                        "simulated scans and with --truth, else 0 inf)")
    r.add_argument("--max-memory", type=_number(float, "--max-memory", 0), default=None, metavar="GB",
                   help="refuse a reconstruction whose memory estimate is larger (default 4, or $INR_MAX_MEMORY_GB)")
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
                        "(tomography.recon.tv_penalty; default: per model, from its spec: "
                        + ", ".join(f"{n} {spec(n).task('ct').tv:g}" for n in names("ct")) + ")")
    r.add_argument("--batch", "--view-batch", dest="view_batch", type=_number(int, "--view-batch", 0, allow_none=True), default=None,
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
    r.set_defaults(hyper={})   # model hyper-parameters: --set KEY=VALUE of the family's spec, or --config
    add_config_options(r, "any option of the command by its name (e.g. --set tv_weight=1e-3), or a model "
                          "hyper-parameter of the family's spec (e.g. --set levels=12); repeatable")
    add_common(r, seed_help="seeds noise, initialisation and everything else",
               out_help="run folder to create, must not exist (default runs/ct-<image>-<model>-<views>v)")
    r.add_argument("--checkpoint-every", type=number(int, "--checkpoint-every", 0), default=0, metavar="N",
                   help="checkpoint the INR fit every N steps (kept in the hidden staging folder after an "
                        "interruption so --resume can continue; 0: off)")
    r.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at --out from its last checkpoint (same options)")
    s = sub.add_parser("simulate", help="write a simulated scan (sinogram, angles, truth, geometry) as files")
    _scan_options(s, simulate_only=True)
    s.add_argument("--raw", action="store_true",
                   help="write transmission counts with flat and dark fields (needs --photons) instead of line "
                        "integrals")
    s.add_argument("--format", choices=("npy", "tif"), default="npy", help="sinogram file format")
    add_common(s, skip=("device", "threads", "quiet"), seed_help="seeds the noise",
               out_help="folder to create, must not exist (default runs/scan-<image>-<views>v)")
    return p




def run_baselines(scan, fbp_filter="ramp", sart_iterations=10, tv_weight=3e-4, tv_iterations=300, device="cpu"):
    """FBP, SART and TV reconstructions of a simulated ``scan`` with PSNR/SSIM and wall seconds (the study's
    call; :func:`tomography.result.run_baselines` is the library's)."""
    from .result import score
    from .result import run_baselines as run

    cfg = CTConfig(fbp_filter=fbp_filter, sart_iterations=sart_iterations, tv_weight=tv_weight,
                   tv_iterations=tv_iterations)
    recons, seconds = run(scan, cfg, device)
    metrics = {k: {**score(v, scan.truth, cfg.box), "seconds": seconds[k]} for k, v in recons.items()}
    metrics["fbp"]["filter"] = fbp_filter
    metrics["sart"]["iterations"] = sart_iterations
    metrics["tv"].update({"weight": tv_weight, "iterations": tv_iterations})
    return recons, metrics


# ---- options -> configs ------------------------------------------------------------------------------

def scan_spec(args, views=None) -> ScanSpec:
    return ScanSpec(size=args.size, views=views if views is not None else (args.views or 100),
                    angle_range=args.angle_range, full_field=args.full_field, geometry=args.geometry,
                    source_distance=args.source_distance, detector_distance=args.detector_distance,
                    pitch=args.detector_pitch, det_offset=args.detector_offset,
                    detectors=getattr(args, "detectors", None), photons=args.photons, readout=args.readout_noise,
                    peak_attenuation=args.peak_attenuation)


def ct_config(args, box) -> CTConfig:
    return CTConfig(model=args.model, params=args.params, steps=args.steps, seconds=args.seconds, lr=args.lr,
                    output=args.output, inr_tv=args.inr_tv, view_batch=args.view_batch,
                    coarse_to_fine=args.coarse_to_fine, mask_outside=not args.no_mask, fbp_filter=args.fbp_filter,
                    sart_iterations=args.sart_iterations, tv_weight=args.tv_weight, tv_iterations=args.tv_iterations,
                    box=tuple(args.box) if args.box else box, seed=args.seed, device=args.device, quiet=args.quiet,
                    checkpoint_every=args.checkpoint_every, resume=args.resume, lbfgs=lbfgs_options(args),
                    max_memory_gb=args.max_memory, hyper=dict(getattr(args, "hyper", {}) or {}))


def _image_name(args) -> str:
    if args.phantom:
        return {"shepp": "shepp-logan", "thorax": "thorax"}[args.phantom]
    return os.path.splitext(os.path.basename(args.image))[0]


def _truth_image(args, spec: ScanSpec) -> np.ndarray:
    from .phantoms import make as make_phantom
    from .recon import load_image

    if bool(args.phantom) == bool(args.image):
        raise InputError("give exactly one of IMAGE or --phantom")
    truth = make_phantom(args.phantom, spec.size or (256, 256)) if args.phantom else load_image(args.image, spec.size)
    if min(truth.shape) < MIN_SIZE:
        raise InputError(f"the image is {truth.shape[0]}x{truth.shape[1]} pixels; CT reconstruction here needs "
                         f"at least {MIN_SIZE}x{MIN_SIZE} (use --size)")
    return truth


def _measured_scan(args):
    """(Scan, ScanSpec, description) of ``--sinogram`` and its companion files."""
    import torch

    from .io import line_integrals, read_angles, read_array, read_sinogram
    from .recon import Scan

    if args.image or args.phantom:
        raise InputError("--sinogram reconstructs a measured scan; it takes no IMAGE or --phantom")
    if args.photons is not None or args.readout_noise:
        raise InputError("--photons / --readout-noise simulate noise; a measured --sinogram has its own")
    if (args.flat or args.dark) and not args.raw:
        raise InputError("--flat and --dark correct raw transmission data and need --raw")
    if args.raw and not args.flat:
        raise InputError("--raw needs --flat (the detector counts without an object)")
    sino = read_sinogram(args.sinogram)
    views, n_det = sino.shape
    if args.views is not None and args.views != views:
        raise InputError(f"--views {args.views} but --sinogram {args.sinogram} has {views} rows (one per angle)")
    if args.angles and args.angle_range is not None:
        raise InputError("give --angles FILE or --angle-range, not both")
    spec = scan_spec(args, views=views)
    theta = read_angles(args.angles, views) if args.angles else None
    if spec.size is None:
        if spec.geometry == "fan" or spec.full_field:
            raise InputError("--size is needed with a fan-beam or --full-field --sinogram (the reconstruction grid)")
        spec.size = (n_det, n_det)
    truth = None
    if args.truth:
        truth = read_array(args.truth, "--truth", ndim=(2,))
        if truth.shape != tuple(spec.size):
            raise InputError(f"--truth {args.truth} has shape {truth.shape}; the reconstruction grid is "
                             f"{tuple(spec.size)} (--size)")
    if args.raw:
        flat = read_array(args.flat, "--flat", ndim=(1, 2))
        dark = read_array(args.dark, "--dark", ndim=(1, 2)) if args.dark else None
        sino = line_integrals(sino, flat, dark, args.mu)
    geom = spec.make_geometry(spec.size, theta, n_det)
    if geom.n_det != n_det:
        raise InputError(f"--sinogram has {n_det} detector bins; the geometry has {geom.n_det}")
    scan = Scan(truth, geom, None, torch.as_tensor(sino, dtype=torch.float32))
    return scan, spec, {"sinogram": os.path.abspath(args.sinogram), "angles": args.angles, "truth": args.truth,
                        "raw": args.raw, "flat": args.flat, "dark": args.dark, "mu": args.mu if args.raw else None}


def _simulated_scan(args, cfg: CTConfig | None):
    """(Scan, ScanSpec, description) of IMAGE or --phantom; the memory estimate is checked before projecting."""
    from .recon import scan_image

    if args.views is None:
        args.views = 100
    spec = scan_spec(args)
    cfg = cfg or CTConfig(baselines=False, params=1)
    if bool(args.phantom) == bool(args.image):
        raise InputError("give exactly one of IMAGE or --phantom")
    if args.phantom:   # the phantom's size is known: check the memory before drawing it
        cfg.check_memory(spec.make_geometry(spec.size or (256, 256)))
    truth = _truth_image(args, spec)
    geom = spec.make_geometry(truth.shape)
    cfg.check_memory(geom)
    scan = scan_image(truth, geom, spec.photons, spec.readout, spec.peak_attenuation, seed=args.seed)
    image = args.image or {"shepp": "skimage.data.shepp_logan_phantom", "thorax": "tomography.phantoms.thorax"}[args.phantom]
    return scan, spec, {"image": image}


def recon(args) -> dict:
    """``recon``: options -> configs -> scan -> :func:`tomography.reconstruct` -> run folder."""
    import torch

    from inr.train import resolve_device

    from .radon import geometry_dict
    from .result import reconstruct

    measured = bool(args.sinogram)
    if not measured:
        for flag in ("angles", "truth", "raw", "flat", "dark"):
            if getattr(args, flag):
                raise InputError(f"--{flag} belongs to a measured scan and needs --sinogram FILE")
    box = (0.0, 1.0) if (not measured or args.truth) else (0.0, math.inf)
    cfg = ct_config(args, box)               # every reconstruction option checked here
    name = os.path.splitext(os.path.basename(args.sinogram))[0] if measured else _image_name(args)
    views_label = f"{args.views}v" if args.views else "scan"
    out = args.out or os.path.join("runs", f"ct-{name}-{args.model}-{views_label}")
    run = RunFolder(out, resume=args.resume)   # refuses an existing --out before any work
    scan, spec, source = _measured_scan(args) if measured else _simulated_scan(args, cfg)
    cfg.check_memory(scan.geometry)
    device = resolve_device(args.device)
    apply_threads(args.threads)
    with run:
        result = reconstruct(scan, cfg, checkpoint_path=run.checkpoint)
        config = {"command": "recon", **source, "size": list(scan.geometry.shape),
                  "views": scan.geometry.n_angles, "angle_range": spec.range, "circle": not args.full_field,
                  "geometry": geometry_dict(scan.geometry), "mask_outside": not args.no_mask,
                  "photons": spec.photons, "readout_noise": spec.readout, "mu": scan.mu,
                  "peak_attenuation": spec.peak_attenuation, "model": result.model.config, "params": args.params,
                  "steps": args.steps, "seconds": args.seconds, "lr": args.lr,
                  "inr_tv": result.metrics[args.model]["inr_tv"], "view_batch": args.view_batch,
                  "coarse_to_fine": args.coarse_to_fine, "output": args.output, "fbp_filter": args.fbp_filter,
                  "sart_iterations": args.sart_iterations, "tv_weight": args.tv_weight,
                  "tv_iterations": args.tv_iterations, "box": list(cfg.box), "seed": args.seed, "device": str(device),
                  "threads": torch.get_num_threads(), "versions": versions("scipy", "scikit-image")}
        options = {k: (list(v) if isinstance(v, tuple) else v) for k, v in vars(args).items()
                   if k not in ("config", "set", "command") and isinstance(v, (str, int, float, bool, list, tuple,
                                                                                dict, type(None)))}
        run.write_json("config.json", {**config, "options": options})
        result.write(run)   # metrics.json last: marks a complete run
    return {"out": os.path.abspath(out), "metrics": result.metrics}


def simulate(args) -> dict:
    """``simulate``: a scan written as files that ``recon --sinogram`` reads back (and the command to do so)."""
    from .io import write_array
    from .radon import geometry_dict

    if args.raw and args.photons is None:
        raise InputError("--raw writes photon counts and needs --photons")
    out = args.out or os.path.join("runs", f"scan-{_image_name(args) if (args.phantom or args.image) else 'x'}-"
                                           f"{args.views or 100}v")
    run = RunFolder(out)
    scan, spec, source = _simulated_scan(args, None)
    geom = scan.geometry
    ext = "tif" if args.format == "tif" else "npy"
    with run:
        files = {"sinogram": f"sinogram.{ext}", "angles": "angles.txt", "truth": "truth.npy"}
        if args.raw:
            counts = scan.info["counts"]
            write_array(run.file(files["sinogram"]), counts)
            files.update(flat="flat.npy", dark="dark.npy")
            write_array(run.file("flat.npy"), np.full(geom.n_det, float(spec.photons)))
            write_array(run.file("dark.npy"), np.zeros(geom.n_det))
        else:
            write_array(run.file(files["sinogram"]), scan.measured.double().numpy())
        run.write_text("angles.txt", "".join(f"{t!r}\n" for t in geom.theta))
        write_array(run.file("truth.npy"), scan.truth)
        run.write_json("scan.json", {**source, "geometry": geometry_dict(geom), "views": geom.n_angles,
                                     "photons": spec.photons, "readout_noise": spec.readout, "mu": scan.mu,
                                     "seed": args.seed, "files": files})
    d = os.path.abspath(out)
    cmd = ["python", "-m", "tomography", "recon", "--sinogram", os.path.join(d, files["sinogram"]),
           "--angles", os.path.join(d, "angles.txt"), "--size", f"{geom.shape[0]}x{geom.shape[1]}"]
    if args.full_field:
        cmd.append("--full-field")
    if spec.geometry == "fan":
        cmd += ["--geometry", "fan", "--source-distance", repr(geom.source_distance), "--detector-distance",
                repr(geom.detector_distance), "--detector-pitch", repr(geom.pitch), "--detector-offset",
                repr(geom.det_offset)]
    if args.raw:
        cmd += ["--raw", "--flat", os.path.join(d, "flat.npy"), "--dark", os.path.join(d, "dark.npy"),
                "--mu", repr(scan.mu)]
    cmd += ["--truth", os.path.join(d, "truth.npy")]
    return {"out": d, "command": " ".join(shlex.quote(c) for c in cmd)}


def _format_rows(metrics: dict) -> str:
    rows = []
    for k, v in metrics.items():
        score = f"{v['psnr']:6.2f} dB  SSIM {v['ssim']:.4f}  " if "psnr" in v else ""
        rows.append(f"{k:>12s}: {score}residual {v['residual']:.4f}  {v['seconds']:8.1f} s")
    return "\n".join(rows)


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser()
    args = parse_args(parser, argv)
    if isinstance(args, int):   # --help / --version (0) or a usage error (2), already reported
        return args

    def command() -> int:
        if args.command == "recon":
            # --config (a run's config.json: its "options") under the flags given; --set: options or hyper
            apply_config_file(args, parser, argv, section="options", skip=("out", "resume", "threads"))
            args.hyper = dict(getattr(args, "hyper", None) or {})
            apply_sets(args, args.hyper)
        if args.command == "simulate":
            res = simulate(args)
            print(f"scan written to {res['out']}\nreconstruct it with:\n  {res['command']}")
            return 0
        res = recon(args)
        print(_format_rows(res["metrics"]))
        print(f"run folder: {res['out']}")
        return 0
    return run_main(parser.prog, command)
