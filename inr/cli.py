"""``inr fit [FILE]``, ``inr fit FILE FILE ... | FOLDER/`` (batched, :mod:`inr.batched`; under
torchrun the files are sharded over the ranks, :mod:`inr.shard`), ``inr merge RUN_DIR`` and
``inr eval RUN_DIR``.

Errors a user can cause (missing or corrupt file, bad option, unusable --out) print one line on
stderr and exit with code 2; nothing is left behind that looks like a finished run.
"""
from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

from .cliutil import (EXIT_USAGE, Parser, add_common, add_lbfgs, add_version, apply_threads, lbfgs_options, number,
                      parse_args, positive_float, run_main)
from .fitting import DEFAULT_LR, EVAL_EVERY, MAX_PARAMS, RunError, evaluate_run, fit_signal
from .models import MODELS

# model hyper-parameter options: registry keyword -> (type, help)
_HYPER = {
    "hidden": (int, "hidden width (siren, spder, gauss, wire, relu-pe); overrides --params"),
    "hidden_layers": (int, "hidden layers (siren, spder, gauss, wire, relu-pe; default 3)"),
    "rank": (int, "LRNN rank r per layer; overrides --params"),
    "depth": (int, "LRNN layers (default 2)"),
    "dbar": (int, "LRNN components per product (default 2)"),
    "width": (int, "LRNN component MLP width m (default 4)"),
    "w0": (float, "frequency factor (siren/spder/lrnn default 30, wire 20)"),
    "w0_first": (float, "first-layer frequency factor (audio defaults: siren/spder 3000, lrnn 300)"),
    "activation": (str, "sin, spder or spder-atan (siren/spder/lrnn families)"),
    "scale": (float, "Gauss scale s (default 10)"),
    "s0": (float, "WIRE Gaussian width s0 (default 10)"),
    "n_freqs": (int, "ReLU+PE frequencies L (default 10)"),
    "kernel": (str, "LRNN component kernel: fused (default; chunked recompute, fastest on the CPU), compiled "
                    "(torch.compile, the GPU speed path; first step compiles) or plain (autograd)"),
    "precision": (str, "LRNN hidden-layer projections in fp32 (default) or bf16 (components stay fp32)"),
}


_Parser = Parser


def _positive_int(name, high=None):
    return number(int, name, 1, high)


_seconds = positive_float("--seconds", allow_none=True)


def _batch(s):
    if s in ("auto", "full"):
        return s
    return _positive_int("--batch")(s)


def _floats(name):
    def parse(s):
        try:
            v = [float(x) for x in s.split(",") if x.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"{name} takes numbers (comma-separated), got {s!r}") from None
        if not all(math.isfinite(x) for x in v):
            raise argparse.ArgumentTypeError(f"{name} takes finite numbers, got {s!r}")
        return v
    return parse


def _value(s: str):
    """A --set value: int, float, true/false/none, else the string."""
    low = s.lower()
    if low in ("true", "false"):
        return low == "true"
    if low == "none":
        return None
    for cast in (int, float):
        try:
            return cast(s)
        except ValueError:
            pass
    return s


def _key_value(s):
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip().replace("-", "_"), _value(v.strip())


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inr", description="Fit implicit neural representations (SIREN, SPDER, WIRE, Gauss, "
                                        "ReLU+PE, LRNN) to images and audio.")
    add_version(p)
    sub = p.add_subparsers(dest="command", metavar="{fit,eval,merge}", parser_class=_Parser)
    sub.required = True

    f = sub.add_parser("fit", help="fit a model to an image or WAV file (default: the cameraman image)",
                       description="Fit a model to an image (PNG/JPEG/TIFF/BMP) or a WAV file and write a run "
                                   "folder: reconstruction, error map, metrics.json, history.csv, curves.png, "
                                   "model.pt, config.json.")
    f.add_argument("file", nargs="*", default=[],
                   help="image or WAV file; omitted: scikit-image's 512x512 cameraman.  Several files or a "
                        "folder: one model per signal, trained together (same result as fitting each alone "
                        "with the same --seed); the run folder gets one subfolder per signal and "
                        "summary.json/.md/.csv; files that fail are reported and skipped (exit code 0 with a "
                        "warning line per failed file, 1 if none could be fitted).  Under torchrun the sorted "
                        "files are split over the ranks (rank r fits files r, r+W, ...) and --out is required")
    # The hash grid is the default: on a CPU it reaches 30/35/40 dB first on the benchmark images
    # (benchmarks/image_fit.py, README).
    f.add_argument("--model", default="hash", choices=MODELS,
                   help="model family (default: %(default)s, the fastest to 30/35/40 dB on a CPU in our "
                        "benchmark; lrnn-spder learns the most per step)")
    f.add_argument("--params", type=_positive_int("--params", MAX_PARAMS), default=200_000,
                   help="parameter budget; picks the width / rank closest to it (default: %(default)s; "
                        "ignored when --hidden or --rank is given)")
    f.add_argument("--steps", type=_positive_int("--steps"), default=20000,
                   help="optimizer steps (default: %(default)s)")
    f.add_argument("--seconds", type=_seconds, default=60.0,
                   help="wall-clock training budget in seconds, 'none' for no limit; training stops at "
                        "--steps or --seconds, whichever comes first (default: %(default)s)")
    f.add_argument("--lr", type=positive_float("--lr"), default=None,
                   help="Adam learning rate (default per model: "
                        + ", ".join(f"{k} {v:g}" for k, v in DEFAULT_LR.items()) + ")")
    f.add_argument("--batch", type=_batch, default="auto",
                   help="random points per step, 'full' for every point; 'auto' = full on CUDA, 4096 on "
                        "the CPU (default: %(default)s)")
    f.add_argument("--eval-every", type=number(int, "--eval-every", 0), default=EVAL_EVERY, metavar="N",
                   help="evaluate the whole signal every N steps, off the training clock (0: only after the "
                        "last step); time to target counts these evaluations (default: %(default)s)")
    f.add_argument("--warmup", type=number(int, "--warmup", 0), default=0, metavar="STEPS",
                   help="linear learning-rate warm-up over this many steps (default: %(default)s)")
    f.add_argument("--schedule-by", choices=("auto", "steps", "time"), default="auto",
                   help="progress of the cosine learning-rate decay: 'steps' (step/--steps), 'time' "
                        "(elapsed/--seconds) or 'auto', the larger of both (default: %(default)s)")
    f.add_argument("--target-psnr", type=_floats("--target-psnr"), action="append", default=None,
                   metavar="DB[,DB...]", help="PSNR targets to time (images; repeatable; default: 30,40)")
    f.add_argument("--target-mse", type=_floats("--target-mse"), action="append", default=None,
                   metavar="MSE[,MSE...]", help="MSE targets to time (audio; repeatable; default: 1e-3,1e-4)")
    add_lbfgs(f, full_batch_help="every point of the signal (at most 65,536: else that many drawn once; "
                                 "one signal only)")
    add_common(f, out_help="run folder to create (must not exist; default: runs/<name>-<model>-<time>)",
               quiet_help="no progress bar and no summary")
    f.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at --out from its last checkpoint")
    f.add_argument("--checkpoint-every", type=number(int, "--checkpoint-every", 0), default=0, metavar="N",
                   help="checkpoint every N steps so an interrupted run can be resumed (default: off)")
    f.add_argument("--group-size", type=_positive_int("--group-size"), default=16,
                   help="several files: at most this many same-shape signals train together; memory per step "
                        "grows with group size x --batch (default: %(default)s)")
    f.add_argument("--engine", choices=("auto", "stacked", "loop"), default="auto",
                   help="several files: 'stacked' weights (few large kernels), 'loop' over the models inside "
                        "each step (cache-friendly), 'auto' = stacked on CUDA, loop on the CPU (default: "
                        "%(default)s)")
    g = f.add_argument_group("model hyper-parameters (passed to the model; see inr.models)")
    for name, (typ, text) in _HYPER.items():
        g.add_argument("--" + name.replace("_", "-"), dest="hp_" + name, type=typ, default=None,
                       metavar=typ.__name__.upper(), help=text)
    g.add_argument("--set", dest="extra", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other model keyword (e.g. --set shared=true --set form=real); repeatable")

    e = sub.add_parser("eval", help="rebuild a run's model, reload its signal and recompute the metrics",
                       description="Rebuild the model of a run folder from config.json and model.pt, reload "
                                   "the signal it was fitted to, and recompute the metrics (written to "
                                   "RUN_DIR/eval.json).")
    e.add_argument("run_dir", help="a run folder written by 'inr fit'")
    add_common(e, skip=("seed", "threads", "out", "quiet"))
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")

    m = sub.add_parser("merge", help="finish a sharded batch run whose ranks ran as separate jobs",
                       description="Combine the per-rank records of a sharded 'inr fit FILES/FOLDER' run (in "
                                   "the hidden .RUN_DIR.partial folder) into summary.json/.md/.csv and move the "
                                   "folder to RUN_DIR.  Under torchrun rank 0 does this by itself.")
    m.add_argument("run_dir", help="the --out folder of the sharded run")
    m.add_argument("--world-size", type=_positive_int("--world-size"), default=None,
                   help="number of ranks expected (default: as recorded by the ranks)")
    return p


def _model_options(a) -> dict:
    opts = {k[3:]: v for k, v in vars(a).items() if k.startswith("hp_") and v is not None}
    opts.update(dict(a.extra))
    return opts


def _flat(groups, default):
    return tuple(x for g in groups for x in g) if groups else default


def _fmt(v, spec: str) -> str:
    """A metric for humans; None / missing (recorded as null: non-finite or not defined) -> n/a."""
    return "n/a" if not isinstance(v, (int, float)) or isinstance(v, bool) else format(v, spec)


def _fmt_metrics(m: dict) -> str:
    if m.get("kind") == "image":
        return f"PSNR {_fmt(m.get('psnr'), '.2f')} dB  SSIM {_fmt(m.get('ssim'), '.4f')}"
    return f"MSE {_fmt(m.get('mse'), '.3e')}  rho_AG {_fmt(m.get('rho_ag'), '.5f')}"


def _cmd_fit(a) -> int:
    from .shard import dist_env

    env = dist_env()
    if len(a.file) > 1 or any(Path(f).is_dir() for f in a.file) or (env and env[1] > 1):
        if a.lbfgs_steps:
            raise RunError("--lbfgs-steps fits one signal at a time; it is not available for several files")
        return _cmd_fit_many(a, env)
    a.file = a.file[0] if a.file else None
    if a.resume and a.out is None:
        raise RunError("--resume needs --out: the folder of the interrupted run")
    apply_threads(a.threads)
    m = fit_signal(a.file, model=a.model, params=a.params, steps=a.steps, seconds=a.seconds, lr=a.lr,
                   batch=None if a.batch == "full" else a.batch,
                   target_psnr=_flat(a.target_psnr, (30.0, 40.0)), target_mse=_flat(a.target_mse, (1e-3, 1e-4)),
                   device=a.device, seed=a.seed, out=a.out, quiet=a.quiet, model_options=_model_options(a),
                   resume=a.resume, checkpoint_every=a.checkpoint_every, eval_every=a.eval_every,
                   warmup=a.warmup, schedule_by=a.schedule_by, lbfgs=lbfgs_options(a))
    if not a.quiet:
        reached = ", ".join(f"{t}: {'%.1f s' % v['seconds'] if v else 'not reached'}"
                            for t, v in m["time_to_target"].items())
        print(f"{m['model']} ({m['params']:,} params) on {m['signal']}: {_fmt_metrics(m)}")
        print(f"{m['steps']} steps in {m['seconds']:.1f} s ({1000 * m['seconds_per_step']:.1f} ms/step, "
              f"stopped by {m['stopped_by']}; +{m['eval_seconds']:.1f} s for {m['evaluations']} whole-signal "
              f"evaluations); targets (whole signal): {reached or 'none'}")
        print(f"run folder: {m['run_dir']}")
    return 0


def _cmd_fit_many(a, env) -> int:
    if a.resume or a.checkpoint_every:
        raise RunError("--resume and --checkpoint-every apply to a single file, not to several files or a folder")
    apply_threads(a.threads)
    from .shard import fit_sharded

    s = fit_sharded(a.file, a.out, model=a.model, params=a.params, steps=a.steps, seconds=a.seconds, lr=a.lr,
                    batch=None if a.batch == "full" else a.batch,
                    target_psnr=_flat(a.target_psnr, (30.0, 40.0)), target_mse=_flat(a.target_mse, (1e-3, 1e-4)),
                    device=a.device, seed=a.seed, quiet=a.quiet, model_options=_model_options(a),
                    group_size=a.group_size, engine=a.engine)
    if env and env[1] > 1 and env[0] != 0:
        return 0   # this rank's share is written; rank 0 merged and reports
    return _report_many(s, a.quiet)


def _report_many(s: dict, quiet: bool) -> int:
    if not quiet:
        for r in s["results"]:
            print(f"{r['folder']}: {_fmt_metrics(r)}")
        print(f"{s['n_ok']} of {s['n_files']} signals fitted ({s['model']}); run folder: {s['run_dir']}")
    for x in s["failures"]:
        print(f"inr fit: warning: skipped {' '.join(x['error'].split())}"
              + ("" if x["file"] in x["error"] else f" ({x['file']})"), file=sys.stderr)
    if s["n_ok"] == 0:
        print(f"inr fit: error: none of the {s['n_files']} files could be fitted (see "
              f"{Path(s['run_dir']) / 'summary.md'})", file=sys.stderr)
        return 1
    return 0


def _cmd_merge(a) -> int:
    from .batched import merge_run

    return _report_many(merge_run(a.run_dir, world_size=a.world_size), False)


def _cmd_eval(a) -> int:
    m = evaluate_run(a.run_dir, device=a.device)
    if a.json:
        print(json.dumps(m, indent=2))
        return 0
    stored = {}
    try:
        stored = json.loads((Path(a.run_dir) / "metrics.json").read_text())
    except (OSError, ValueError):
        pass
    if not isinstance(stored, dict):
        stored = {}
    # untrusted: show only the recorded values that are numbers
    stored = {k: v for k, v in stored.items() if k == "kind" or (isinstance(v, (int, float))
                                                                  and not isinstance(v, bool))}
    line = _fmt_metrics(m)
    if stored.get("kind") == m["kind"]:
        line += f"   (recorded at fit time: {_fmt_metrics(stored)})"
    print(f"{m['model']} ({m['params']:,} params) on {m['signal']}: {line}")
    print(f"written: {Path(a.run_dir) / 'eval.json'}")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``inr`` console script; returns the exit code."""
    a = parse_args(make_parser(), argv)
    if isinstance(a, int):  # --help, or a usage error already reported in one line
        return a
    cmd = {"fit": _cmd_fit, "eval": _cmd_eval, "merge": _cmd_merge}[a.command]
    return run_main(f"inr {a.command}", lambda: cmd(a), interrupted="interrupted; no run folder was completed")


if __name__ == "__main__":
    sys.exit(main())
