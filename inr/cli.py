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
                      open_fraction, parse_args, positive_float, run_main)
from .cliutil import LBFGS_OPTIONS, key_value
from .config import from_dict, merge, read_file
from .fitting import (EVAL_EVERY, EVAL_POINTS, FitConfig, RunError, as_signal, default_out,
                      evaluate_run, fit, with_overrides)
from .models import HASH_PARAMS_MAX, HASH_PARAMS_MIN, HASH_PARAMS_PER_VALUE, names, spec
from .runs import RunFolder
from .train import resolve_device

def _hyper_help(task: str = "image") -> dict:
    """``{hyper-parameter: (type, help)}`` over the families with defaults for ``task``, generated from
    their specs: the help names each family's default."""
    out: dict = {}
    for name in names(task):
        for h in spec(name).hypers:
            if h.type is dict:
                continue
            typ, text, per = out.get(h.name, (h.type, h.help, []))
            per.append(f"{name} {h.default}")
            out[h.name] = (typ, text, per)
    return {k: (t, f"{text}; " + ", ".join(per) + (f"; one of {', '.join(spec_choices(k, task))}"
                                                     if spec_choices(k, task) else ""))
            for k, (t, text, per) in out.items()}


def spec_choices(hyper: str, task: str) -> tuple:
    for name in names(task):
        for h in spec(name).hypers:
            if h.name == hyper and h.choices:
                return tuple(h.choices)
    return ()


def _bool(s):
    low = str(s).lower()
    if low in ("true", "1", "yes"):
        return True
    if low in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {s!r}")


_Parser = Parser


def _positive_int(name, high=None):
    return number(int, name, 1, high)


_seconds = positive_float("--seconds", allow_none=True)


def _params(s):
    if str(s).strip().lower() == "auto":
        return "auto"
    return _positive_int("--params")(s)


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


def make_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="inr", description="Fit implicit neural representations (SIREN, SPDER, WIRE, Gauss, "
                                        "ReLU+PE, LRNN) to images and audio.")
    add_version(p)
    sub = p.add_subparsers(dest="command", metavar="{fit,eval,render,export,merge}", parser_class=_Parser)
    sub.required = True

    d = FitConfig()
    f = sub.add_parser("fit", help="fit a model to an image or WAV file (default: the cameraman image)",
                       argument_default=argparse.SUPPRESS,
                       description="Fit a model to an image (PNG/JPEG/TIFF/BMP) or a WAV file and write a run "
                                   "folder: reconstruction, error map, metrics.json, history.csv, curves.png, "
                                   "model.pt, config.json.  Options come from the defaults, then --config FILE, "
                                   "then the flags given.")
    f.add_argument("file", nargs="*", default=[],
                   help="image or WAV file; omitted: scikit-image's 512x512 cameraman.  Several files or a "
                        "folder: one model per signal, trained together (same weights as fitting each alone "
                        "with the same options); the run folder gets one subfolder per signal and "
                        "summary.json/.md/.csv; files that fail are reported and skipped (exit code 0 with a "
                        "warning line per failed file, 1 if none could be fitted).  Under torchrun the sorted "
                        "files are split over the ranks (rank r fits files r, r+W, ...) and --out is required")
    f.add_argument("--config", metavar="FILE",
                   help="options from a JSON or TOML file (a run's config.json reproduces that run); flags "
                        "given on the command line override it")
    # The hash grid is the default: on a CPU it reaches 30/35/40 dB first on the benchmark images
    # (benchmarks/image_fit.py, docs/results.md).
    f.add_argument("--model", choices=names("image"),
                   help=f"model family (default: {d.model.name}, the fastest to 30/35/40 dB on a CPU in our "
                        "benchmark; lrnn-spder learns the most per step)")
    f.add_argument("--params", type=_params,
                   help="parameter budget; picks the width / rank / table closest to it; 'auto' (the default): "
                        "the family's budget for the signal's number of values (hash grid: "
                        f"{HASH_PARAMS_PER_VALUE:g} per value within [{HASH_PARAMS_MIN:,}, {HASH_PARAMS_MAX:,}], "
                        "docs/results.md; the others 200,000); ignored when --hidden, --rank or --table is given")
    f.add_argument("--steps", type=_positive_int("--steps"), help=f"optimizer steps (default: {d.train.steps})")
    f.add_argument("--seconds", type=_seconds,
                   help="time budget in seconds for the whole fit (set-up, training, evaluations and "
                        "writing the run folder; training stops early by their estimated cost), 'none' for no "
                        f"limit; training also stops at --steps (default: {d.train.seconds:g})")
    lrs = ", ".join(f"{n} {spec(n).task('image').lr:g}" for n in names("image"))
    f.add_argument("--lr", type=positive_float("--lr"), help=f"Adam learning rate (default per model: {lrs})")
    batches = ", ".join(f"{n} {spec(n).task('image').cpu_batch}" if spec(n).task("image").cpu_batch_rule is None
                        else f"{n} {spec(n).task('image').cpu_batch_rule(1)}-{spec(n).task('image').cpu_batch_rule(10**9)} "
                             f"growing with --params"
                        for n in names("image"))
    f.add_argument("--batch", type=_batch,
                   help=f"random points per step, 'full' for every point; 'auto' = full on CUDA, on the CPU the "
                        f"model's batch ({batches}) (default: auto)")
    f.add_argument("--eval-every", type=number(int, "--eval-every", 0), metavar="N",
                   help="evaluate every N steps instead of on training time (0: only after the last step); "
                        "off the training clock; time to target counts these evaluations (default: on time, "
                        "see --eval-fraction)")
    f.add_argument("--eval-fraction", type=open_fraction("--eval-fraction"), metavar="F",
                   help="evaluate on training time, spending at most this fraction of it (the first after "
                        f"step 1; default: {d.train.eval_fraction:g}; without a time budget every {EVAL_EVERY} "
                        f"steps); signals above {EVAL_POINTS:,} points are evaluated on a fixed random subset "
                        f"of that many points during training, whole at the end")
    f.add_argument("--warmup", type=number(int, "--warmup", 0), metavar="STEPS",
                   help="linear learning-rate warm-up over this many steps (default: 0)")
    f.add_argument("--schedule-by", choices=("auto", "steps", "time"),
                   help="progress of the cosine learning-rate decay: 'steps' (step/--steps), 'time' "
                        "(elapsed/--seconds) or 'auto', the larger of both (default: auto)")
    f.add_argument("--target-psnr", type=_floats("--target-psnr"), action="append",
                   metavar="DB[,DB...]", help="PSNR targets to time (images; repeatable; default: 30,40)")
    f.add_argument("--target-mse", type=_floats("--target-mse"), action="append",
                   metavar="MSE[,MSE...]", help="MSE targets to time (audio; repeatable; default: 1e-3,1e-4)")
    add_lbfgs(f, full_batch_help="every point of the signal (at most 65,536: else that many drawn once; "
                                 "one signal only)", suppress=True)
    add_common(f, device=None, seed=None, threads="auto",
               out_help="run folder to create (must not exist; default: runs/<name>-<model>-<time>)",
               quiet_help="no progress bar and no summary", device_help="auto, cpu or cuda (default: auto)",
               seed_help="seeds python, numpy and torch (default: 0)")
    f.add_argument("--resume", action="store_true",
                   help="continue the interrupted run at --out from its last checkpoint")
    f.add_argument("--checkpoint-every", type=number(int, "--checkpoint-every", 0), metavar="N",
                   help="checkpoint every N steps so an interrupted run can be resumed (default: off)")
    f.add_argument("--group-size", type=_positive_int("--group-size"), default=16,
                   help="several files: at most this many same-shape signals train together; memory per step "
                        "grows with group size x --batch (default: %(default)s)")
    f.add_argument("--engine", choices=("auto", "stacked", "loop"), default="auto",
                   help="several files: 'stacked' weights (few large kernels), 'loop' over the models inside "
                        "each step (cache-friendly), 'auto' = stacked on CUDA, loop on the CPU (default: "
                        "%(default)s)")
    g = f.add_argument_group("model hyper-parameters (from each family's spec, inr.models; per-family defaults "
                             "shown; the audio defaults differ where docs/methods.md says)")
    for name, (typ, text) in _hyper_help("image").items():
        g.add_argument("--" + name.replace("_", "-"), dest="hp_" + name, type=_bool if typ is bool else typ,
                       metavar=typ.__name__.upper(), help=text)
    g.add_argument("--set", dest="extra", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="any other option: a config field (e.g. --set train.grad_clip=1) or a model keyword "
                        "(e.g. --set form=real); repeatable")

    e = sub.add_parser("eval", help="rebuild a run's model, reload its signal and recompute the metrics",
                       description="Rebuild the model of a run folder from config.json and model.pt, reload "
                                   "the signal it was fitted to, and recompute the metrics (printed; "
                                   "--out also writes them to a new JSON file; the run folder is never "
                                   "written into).")
    e.add_argument("run_dir", help="a run folder written by 'inr fit'")
    add_common(e, skip=("seed", "threads", "out", "quiet"))
    e.add_argument("--json", action="store_true", help="print the metrics as JSON")
    e.add_argument("--out", help="also write the metrics as JSON to this new file (refused if it exists)")

    r = sub.add_parser("render", help="sample a fitted model at another resolution or sample rate",
                       description="Rebuild a run's model and write the signal it represents at any resolution "
                                   "(images, --size HxW: super-resolution) or sample rate (audio, --rate).")
    r.add_argument("run_dir", help="a run folder written by 'inr fit'")
    r.add_argument("--size", type=_size, help="image size HxW (default: the fitted size)")
    r.add_argument("--rate", type=_positive_int("--rate"), help="audio sample rate (default: the fitted rate)")
    add_common(r, skip=("seed", "quiet"), out_help="file to write (must not exist; default: "
                                                     "RUN_DIR-render-HxW.png / RUN_DIR-render-RATE.wav)")

    x = sub.add_parser("export", help="export a fitted model with torch.export (and ONNX where it installs)",
                       description="Export a run's model as a torch.export program (.pt2), checked by comparing "
                                   "its output with the model's own on the fitted grid.")
    x.add_argument("run_dir", help="a run folder written by 'inr fit'")
    x.add_argument("--format", choices=("torch", "onnx"), default="torch", help="torch.export (.pt2) or ONNX")
    add_common(x, skip=("seed", "quiet"), out_help="file to write (must not exist; default: RUN_DIR.pt2 / "
                                                     "RUN_DIR.onnx)")

    m = sub.add_parser("merge", help="finish a sharded batch run whose ranks ran as separate jobs",
                       description="Combine the per-rank records of a sharded 'inr fit FILES/FOLDER' run (in "
                                   "the hidden .RUN_DIR.partial folder) into summary.json/.md/.csv and move the "
                                   "folder to RUN_DIR.  Under torchrun rank 0 does this by itself.")
    m.add_argument("run_dir", help="the --out folder of the sharded run")
    m.add_argument("--world-size", type=_positive_int("--world-size"), default=None,
                   help="number of ranks expected (default: as recorded by the ranks)")
    return p


FLAG_FIELDS = {"params": "model.params", "steps": "train.steps", "seconds": "train.seconds", "lr": "train.lr",
               "batch": "batch", "eval_every": "eval_every",
               "eval_fraction": "train.eval_fraction", "warmup": "train.warmup",
               "schedule_by": "train.schedule_by", "device": "train.device", "seed": "train.seed",
               "quiet": "train.quiet", "checkpoint_every": "train.checkpoint_every",
               **{k: f"train.{k}" for k in LBFGS_OPTIONS}}


def fit_config(a) -> FitConfig:
    """The :class:`FitConfig` of ``inr fit``'s parsed flags: defaults, then --config, then the flags given."""
    given = vars(a)
    # flags not given are absent (argparse.SUPPRESS), except the shared ones whose "not given" is None/False
    over = {path: given[k] for k, path in FLAG_FIELDS.items()
            if k in given and not (k in ("device", "seed", "quiet") and given[k] in (None, False))}
    if "model" in given:
        over["model"] = given["model"]
    targets = [x for g in (given.get("target_psnr") or []) + (given.get("target_mse") or []) for x in g]
    if targets:
        over["targets"] = targets
    over.update({k[3:]: v for k, v in given.items() if k.startswith("hp_") and v is not None})
    over.update(dict(given.get("extra") or []))
    cfg = FitConfig()
    if given.get("config"):
        data = read_file(given["config"])
        data = data["fit"] if isinstance(data.get("fit"), dict) else data   # a run's config.json
        cfg = from_dict(FitConfig, merge(cfg.to_dict(), data))
    return with_overrides(cfg, over)


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

    files = a.file
    cfg = fit_config(a)
    env = dist_env()
    if len(files) > 1 or any(Path(f).is_dir() for f in files) or (env and env[1] > 1):
        return _cmd_fit_many(a, cfg, env)
    resume = getattr(a, "resume", False)
    if resume and getattr(a, "out", None) is None:
        raise RunError("--resume needs --out: the folder of the interrupted run")
    apply_threads(a.threads)
    resolve_device(cfg.train.device)   # a bad --device fails before any folder is made
    sig = as_signal(files[0] if files else None)
    out = Path(a.out) if getattr(a, "out", None) else default_out(sig, cfg.model.name)
    with RunFolder(out, resume=resume) as run:   # --out checked before any work
        result = fit(sig, cfg, run)
        result.write(run.path)
    m = result.metrics
    if not cfg.train.quiet:
        reached = ", ".join(f"{t}: {'%.1f s' % v['seconds'] if v else 'not reached'}"
                            for t, v in m["time_to_target"].items())
        print(f"{m['model']} ({m['params']:,} params) on {m['signal']}: {_fmt_metrics(m)}")
        what = f"{m['eval_points']:,}-point subset" if m.get("eval_points") else "whole-signal"
        print(f"{m['steps']} steps in {m['seconds']:.1f} s ({1000 * m['seconds_per_step']:.1f} ms/step, "
              f"stopped by {m['stopped_by']}; +{m['eval_seconds']:.1f} s for {m['evaluations']} {what} "
              f"evaluations); targets: {reached or 'none'}")
        print(f"run folder: {out}")
    return 0


def _cmd_fit_many(a, cfg: FitConfig, env) -> int:
    if getattr(a, "resume", False) or cfg.train.checkpoint_every:
        raise RunError("--resume and --checkpoint-every apply to a single file, not to several files or a folder")
    if getattr(a, "eval_every", None) is not None:
        raise RunError("--eval-every applies to a single file: several files are evaluated after the last step")
    apply_threads(a.threads)
    from .shard import fit_sharded

    s = fit_sharded(a.file, cfg, getattr(a, "out", None), a.group_size, a.engine)
    if env and env[1] > 1 and env[0] != 0:
        return 0   # this rank's share is written; rank 0 merged and reports
    return _report_many(s, cfg.train.quiet)


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


def _size(s):
    try:
        h, w = (int(v) for v in s.lower().split("x"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"--size takes HxW (e.g. 1024x1024), got {s!r}") from None
    if h < 1 or w < 1:
        raise argparse.ArgumentTypeError(f"--size must be positive, got {s!r}")
    return h, w


def _cmd_render(a) -> int:
    from .export import render_run

    path = render_run(a.run_dir, size=a.size, rate=a.rate, out=a.out, device=a.device)
    print(f"written: {path}")
    return 0


def _cmd_export(a) -> int:
    from .export import export_run

    path, err = export_run(a.run_dir, fmt=a.format, out=a.out)
    print(f"written: {path} (largest difference from the model on the fitted grid: {err:.3g})")
    return 0


def _cmd_eval(a) -> int:
    m = evaluate_run(a.run_dir, device=a.device, out=a.out)
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
    if a.out:
        print(f"written: {a.out}")
    return 0


def main(argv=None) -> int:
    """Entry point of the ``inr`` console script; returns the exit code."""
    a = parse_args(make_parser(), argv)
    if isinstance(a, int):  # --help, or a usage error already reported in one line
        return a
    cmd = {"fit": _cmd_fit, "eval": _cmd_eval, "render": _cmd_render, "export": _cmd_export,
           "merge": _cmd_merge}[a.command]
    return run_main(f"inr {a.command}", lambda: cmd(a), interrupted="interrupted; no run folder was completed")


if __name__ == "__main__":
    sys.exit(main())
