"""``python -m classify {train,eval,models}``: see ``--help`` of each command."""
from __future__ import annotations

import argparse
import ast
import json
import sys

from inr.cliutil import Parser, add_common, add_config_options, add_version, apply_config_file, apply_sets, parse_args


def _model_arg(s: str):
    key, eq, val = s.partition("=")
    if not eq or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"--model-arg expects KEY=VALUE, got {s!r}")
    try:
        return key, ast.literal_eval(val)
    except (ValueError, SyntaxError):
        return key, val   # a bare string such as norm=none


def _floats(s: str):
    try:
        return tuple(float(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {s!r}") from None


def _ints(s: str):
    try:
        return tuple(int(v) for v in s.split(",") if v.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {s!r}") from None


def parser() -> argparse.ArgumentParser:
    from .models import MODELS
    p = Parser(prog="python -m classify", description="ResNet / PURe / QResNet / Newton-ResNet "
               "image classification (single process or torchrun DDP).")
    add_version(p)
    sub = p.add_subparsers(dest="cmd", required=True, parser_class=Parser)

    t = sub.add_parser("train", help="train a model; writes a run folder",
                       description="Train a classifier. Unset optimiser options take the paper's defaults for the "
                                   "model family (PURe: SGD lr 0.01, wd 1e-3; ResNet: lr 0.1; QResNet: ReLinear-sg "
                                   "with g/b learning rates 1e-5). Multi-GPU: torchrun --nproc_per_node N -m classify "
                                   "train ... (--batch-size is global).")
    t.add_argument("--model", default="resnet20", choices=MODELS)
    t.add_argument("--model-arg", action="append", type=_model_arg, default=[], metavar="KEY=VALUE",
                   help="model hyper-parameter, repeatable (e.g. base_width=32, norm=none, stem=cifar, "
                        "blocks=[2,2,1,1], rezero=True)")
    t.add_argument("--data", default="digits",
                   help="digits | digits:1 | cifar10:DIR | galaxy10:FILE.h5 | folder:DIR (default digits)")
    t.add_argument("--epochs", type=int, default=10)
    t.add_argument("--batch", "--batch-size", dest="batch_size", type=int, default=None,
                   help="global batch size (default: the paper's)")
    t.add_argument("--lr", type=float, default=None)
    t.add_argument("--momentum", type=float, default=None)
    t.add_argument("--weight-decay", type=float, default=None)
    t.add_argument("--schedule", choices=("step", "cosine", "constant"), default=None)
    t.add_argument("--milestones", type=_ints, default=None, help="epochs of the step schedule, e.g. 80,120")
    t.add_argument("--gamma", type=float, default=0.1, help="step-schedule factor (default 0.1)")
    t.add_argument("--warmup-epochs", type=float, default=0.0)
    t.add_argument("--lr-g", type=float, default=None, help="QResNet: learning rate of the g terms (default 1e-5)")
    t.add_argument("--lr-b", type=float, default=None, help="QResNet: learning rate of the b terms (default 1e-5)")
    t.add_argument("--grad-clip", type=float, default=None, help="clip the gradient norm to this value")
    t.add_argument("--workers", type=int, default=0, help="data-loader worker processes (lazy data sets)")
    t.add_argument("--compile", action="store_true", help="torch.compile the model")
    t.add_argument("--amp", choices=("auto", "bf16", "off"), default="auto", help="bf16 autocast (auto: on CUDA)")
    t.add_argument("--channels-last", choices=("auto", "on", "off"), default="auto", help="auto: on CUDA")
    t.add_argument("--sync-bn", action="store_true", help="SyncBatchNorm across processes (DDP)")
    t.add_argument("--augment", dest="augment", action="store_true", default=None,
                   help="random crop (pad 4) + horizontal flip (default: on, except for digits)")
    t.add_argument("--no-augment", dest="augment", action="store_false", help="no random crop / flip")
    t.add_argument("--image-size", type=int, default=None, help="resize images to SIZE x SIZE")
    t.add_argument("--test-fraction", type=float, default=0.1, help="test split for galaxy10 / unsplit folders")
    t.add_argument("--split-seed", type=int, default=0, help="seed of the train/test split (fixed across --seed)")
    t.add_argument("--limit-train", type=int, default=None, help="use N training images (a fixed random subset)")
    t.add_argument("--limit-test", type=int, default=None, help="use N test images")
    t.add_argument("--target", type=_floats, default=(), help="test accuracies to time, e.g. 0.8,0.9")
    t.add_argument("--noise-peak", type=float, default=None, help="also report Poisson-noise accuracy at the end")
    t.add_argument("--eval-batch-size", type=int, default=256)
    add_config_options(t, "any option of the command (e.g. --set epochs=20) or a model keyword like --model-arg "
                          "(e.g. --set width=32); repeatable")
    add_common(t, out=None, out_help="run folder to create; must not exist, except with --resume (default: "
                                     "runs/<model>-<data>-<time>)",
               threads_help="CPU threads per process; 'auto' = every core, or only the cores left free when "
                            "other processes are running right now (inr.train.resolve_threads)",
               quiet_help="no progress output")
    t.add_argument("--resume", action="store_true", help="continue from OUT/checkpoint.pt")

    e = sub.add_parser("eval", help="clean and Poisson-noise accuracy of a run folder (printed as JSON; --out "
                                    "also writes it to a new file)")
    e.add_argument("run_dir")
    e.add_argument("--noise-peak", type=float, default=10.0, help="photon count at intensity 1 (default 10)")
    e.add_argument("--noise-seed", type=int, default=None, help="default: the run's split seed")
    e.add_argument("--data", default=None, help="evaluate on another data spec (same format)")
    add_common(e, skip=("seed", "threads", "out", "quiet"))
    e.add_argument("--batch-size", type=int, default=256)
    e.add_argument("--workers", type=int, default=0)
    e.add_argument("--out", help="also write the result as JSON to this new file (refused if it exists)")

    m = sub.add_parser("models", help="list the model names with parameter counts")
    m.add_argument("--num-classes", type=int, default=10)
    m.add_argument("--in-channels", type=int, default=3)
    return p


def main(argv=None) -> int:
    import sys

    argv = list(sys.argv[1:] if argv is None else argv)
    p = parser()
    args = parse_args(p, argv)
    if isinstance(args, int):   # --help / --version (0) or a usage error (2), already reported
        return args
    from inr.cliutil import run_main

    from .train import TrainError

    def command():
        if args.cmd == "train":
            # --config: the file's values (a run's config.json: its "args") under the flags given
            apply_config_file(args, p, argv, section="args", skip=("out", "resume", "threads"),
                              rename={"model_args": "model_arg", "targets": "target"})
            extra = dict(args.model_arg)
            apply_sets(args, extra)
            args.model_arg = list(extra.items())
            if args.out is None:
                import time

                data = args.data.split(":")[0]
                args.out = f"runs/{args.model}-{data}-{time.strftime('%Y%m%d-%H%M%S')}"
        return _run(args)
    return run_main("python -m classify", command, extra=(TrainError,))


def _run(args) -> int:
    from .train import TrainArgs, evaluate_run, train
    if args.cmd == "train":
        kw = vars(args).copy()
        for k in ("cmd", "model_arg", "target", "config", "set"):
            kw.pop(k)
        res = train(TrainArgs(**kw, targets=args.target, model_args=dict(args.model_arg)))
        if not args.quiet and "final_test_acc" in res:
            print(json.dumps({k: res[k] for k in ("model", "params", "final_test_acc", "best_test_acc",
                                                  "train_seconds", "images_per_s") if k in res}))
    elif args.cmd == "eval":
        res = evaluate_run(args.run_dir, noise_peak=args.noise_peak, device=args.device, data=args.data,
                           batch_size=args.batch_size, workers=args.workers, noise_seed=args.noise_seed,
                           out_file=args.out)
        print(json.dumps(res, indent=2))
    else:
        from .models import MODELS, build, count_params
        for name in MODELS:
            print(f"{name:15s} {count_params(build(name, args.num_classes, args.in_channels)):>12,d}")
    return 0
