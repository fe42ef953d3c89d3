"""``python -m approx runge ...`` (the Runge study) and ``python -m approx pieces MODEL`` (exact pieces).

Exit codes: 0 success; 1 the pieces formula misses the network by more than ``--tol``; 2 a usage
error (bad option, missing or corrupt file, unsupported network), printed without a traceback.
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np

from inr.cliutil import Parser, add_common, add_config_options, add_lbfgs, apply_config_file, apply_sets, add_version, apply_threads, number, parse_args, run_main
from inr.errors import InputError
from inr.runfiles import write_new
from inr.runs import check_out as check_out_file

QUICK = {"widths": (1, 4, 4, 1), "n_train": 11, "n_test": 20, "seeds": 1, "steps": 60}


def _widths(text: str) -> tuple:
    try:
        return tuple(int(w) for w in text.replace("-", ",").split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected sizes like 1,10,10,1, got {text!r}") from None


def _runge_parser(sub) -> argparse.ArgumentParser:
    from approx.runge import RungeConfig, STRATEGIES

    d = RungeConfig()
    p = sub.add_parser("runge", help="fit the Runge function (or --target) with QNNs under ReLinear strategies",
                       description="Train ReLU QNNs (and a conventional MLP) on equispaced samples of a 1-D target "
                                   "on [-1, 1]; report test RMSE over seeds, exact pieces and classical references.")
    p.add_argument("--target", default=d.target, help="'runge' or an expression in x, e.g. 'abs(x)', 'tanh(20*x)'")
    p.add_argument("--widths", type=_widths, default=d.widths, help="layer sizes, default 1,10,10,10,10,1")
    p.add_argument("--n-train", type=int, default=d.n_train, help="equispaced training points (default %(default)s)")
    p.add_argument("--n-test", type=int, default=d.n_test, help="test points off the training grid")
    p.add_argument("--strategies", default=",".join(STRATEGIES), help="comma list from " + ", ".join(STRATEGIES))
    p.add_argument("--seeds", type=int, default=d.seeds, help="runs per strategy (seeds seed .. seed+N-1)")
    p.add_argument("--steps", type=int, default=d.steps, help="full-batch Adam steps per run")
    p.add_argument("--lr", type=float, default=d.lr, help="learning rate of r terms and everything else")
    p.add_argument("--lr-g", type=float, default=d.lr_g, help="ReLinear-sg learning rate of the g terms")
    p.add_argument("--lr-b", type=float, default=d.lr_b, help="ReLinear-sg learning rate of the b terms")
    p.add_argument("--lr-final", type=float, default=d.lr_final, help="final lr as a fraction of the initial")
    p.add_argument("--alpha", type=float, default=d.alpha, help="ReLinear-sw-L1 soft threshold per step")
    p.add_argument("--beta", type=float, default=d.beta, help="ReLinear-sw-L2 decay fraction per step")
    p.add_argument("--compact", action="store_true", help="compact quadratic neurons (no product term)")
    p.add_argument("--pieces-tol", type=float, default=d.pieces_tol, help="tolerance of the pieces check")
    p.add_argument("--quick", action="store_true", help="tiny setting for smoke tests: " +
                   ", ".join(f"{k}={v}" for k, v in QUICK.items()) + " (explicit options still win)")
    add_lbfgs(p, full_batch_help="the training points")
    # the networks are tiny: one thread is fastest (extra threads spin: 40x slower measured on a busy 2-core box)
    add_config_options(p, "any option of the command by its name (e.g. --set lr_g=1e-4); repeatable")
    add_common(p, device=d.device, seed=d.seed, threads=1, out=None,
               out_help="study folder to create (must not exist; default: runs/runge-<time>)",
               device_help="auto, cpu or cuda (cpu by default: the nets are tiny)", seed_help="first seed",
               threads_help="CPU threads for torch, or 'auto' (inr.train.resolve_threads); the networks are "
                            "tiny, so one thread is fastest and extra threads only wait",
               quiet_help="no progress bars or per-run lines")
    return p


def _pieces_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("pieces", help="the exact polynomial pieces of a saved univariate ReLU (Q)NN",
                       description="Expand a univariate ReLU network (quadratic or conventional) saved as model.pt "
                                   "+ config.json into its exact polynomial pieces and check them against the network.")
    p.add_argument("model", help="model folder (holding model.pt and config.json) or the model.pt file")
    p.add_argument("--format", choices=("table", "latex", "json"), default="table")
    p.add_argument("--tol", type=number(float, "--tol", 0), default=1e-9,
                   help="max |formula - network| / max |network| (default 1e-9)")
    p.add_argument("--grid", type=number(int, "--grid", 2, 10_000_000), default=200_001,
                   help="float64 check points (default %(default)s)")
    p.add_argument("--domain", type=number(float, "--domain", -1e6, 1e6), nargs=2, metavar=("LO", "HI"),
                   help="default: the config's domain")
    p.add_argument("--digits", type=number(int, "--digits", 1, 50), default=10,
                   help="significant digits printed (table, latex)")
    p.add_argument("--exact", action="store_true",
                   help="table/latex: a sympy Piecewise with exact rationals and exact algebraic breakpoints "
                        "(slow beyond small networks); json always holds float64 values")
    p.add_argument("--out", help="write to this file (via a temporary name) instead of stdout")
    return p


def format_table(pw, digits: int) -> str:
    rows = [f"{'piece':>5}  {'interval':<{2 * digits + 16}}  {'degree':>6}  coefficients of x^0, x^1, ..."]
    for k, p in enumerate(pw.pieces):
        iv = f"[{p.lo:.{digits}g}, {p.hi:.{digits}g}]"
        coefs = " ".join(f"{c:.{digits}g}" for c in p.coef[:p.degree + 1])
        rows.append(f"{k:>5}  {iv:<{2 * digits + 16}}  {p.degree:>6}  {coefs}")
    return "\n".join(rows)


def _summary_line(pw, chk: dict, tol: float) -> str:
    ok = chk["relative_error"] <= tol
    return (f"{len(pw.pieces)} pieces, {len(pw.breakpoints)} breakpoints on [{pw.lo:g}, {pw.hi:g}]; "
            f"max |formula - network| = {chk['max_abs_error']:.3e} (relative {chk['relative_error']:.3e}, "
            f"tol {tol:g}) on {chk['grid_points']} float64 points: {'OK' if ok else 'ABOVE TOLERANCE'}")


def run_pieces(args) -> int:
    from approx import nets, pieces

    if args.out:
        check_out_file(args.out)
    net, config = nets.load(args.model)
    lo, hi = args.domain if args.domain else config.get("domain", [-1.0, 1.0])
    if not lo < hi:
        raise InputError(f"--domain must be LO HI with LO < HI, got {lo:g} {hi:g}")
    if args.grid < 2:
        raise InputError(f"--grid must be >= 2, got {args.grid}")
    pw = pieces.expand(net, lo, hi)
    chk = pieces.check(net, pw, n=args.grid)
    line = _summary_line(pw, chk, args.tol)
    if args.format == "json":
        text = json.dumps({"model": str(args.model), "domain": [pw.lo, pw.hi], "n_pieces": len(pw.pieces),
                           "breakpoints": [{"x": b.x, "relu_layer": b.relu, "neurons": list(b.neurons)}
                                           for b in pw.breakpoints],
                           "pieces": [{"interval": [p.lo, p.hi], "degree": p.degree,
                                       "coefficients": p.coef[:p.degree + 1].tolist()} for p in pw.pieces],
                           "check": {**chk, "tol": args.tol, "ok": chk["relative_error"] <= args.tol}}, indent=1)
    elif args.format == "latex":
        import sympy as sp
        text = sp.latex(pw.to_sympy(exact=args.exact, digits=args.digits)) + f"\n% {line}"
    elif args.exact:
        text = str(pw.to_sympy(exact=True)) + f"\n{line}"
    else:
        text = format_table(pw, args.digits) + f"\n{line}"
    if args.out:
        write_new(args.out, text + "\n")
        print(line)
    else:
        print(text)
    if chk["relative_error"] > args.tol or not np.isfinite(chk["relative_error"]):
        print(f"error: the pieces miss the network by {chk['relative_error']:.3e} (relative) > --tol {args.tol:g}",
              file=sys.stderr)
        return 1
    return 0


def run_runge(args) -> int:
    from approx.runge import RungeConfig, study

    given = set(args._explicit)
    kw = {f.name: getattr(args, f.name) for f in fields(RungeConfig) if hasattr(args, f.name)}
    kw["strategies"] = tuple(s.strip() for s in args.strategies.split(",") if s.strip())
    if args.quick:
        kw.update({k: v for k, v in QUICK.items() if k not in given})
    cfg = RungeConfig(**kw)
    from approx.target import parse_target
    parse_target(cfg.target)          # a bad --target fails before the output folder is touched
    study(cfg, args.out)              # refuses an existing --out; built under a hidden name, renamed at the end
    print(Path(args.out, "table.md").read_text())
    return 0


def main(argv=None) -> int:
    import torch

    argv = list(sys.argv[1:] if argv is None else argv)
    parser = Parser(prog="python -m approx",
                    description="Quadratic networks: the Runge study and exact symbolic pieces.")
    add_version(parser)
    sub = parser.add_subparsers(dest="command", required=True, parser_class=Parser)
    _runge_parser(sub)
    _pieces_parser(sub)
    args = parse_args(parser, argv)
    if isinstance(args, int):   # --help / --version (0) or a usage error (2), already reported
        return args
    args._explicit = {a.split("=")[0].lstrip("-").replace("-", "_"): True for a in argv if a.startswith("--")}
    if args.command == "runge":
        def configured():
            # --config (a study's config.json: its "config") under the flags given, then --set
            apply_config_file(args, parser, argv, section="config", skip=("quiet",))
            apply_sets(args)
            args._explicit.update({k: True for k, _ in args.set})
            if args.out is None:
                import time
                args.out = f"runs/runge-{time.strftime('%Y%m%d-%H%M%S')}"
            return run_runge(args)
    else:
        configured = None
    threads = apply_threads(getattr(args, "threads", 1))   # pieces: one thread too
    try:  # user-caused errors: one line, exit 2 (inr.cliutil.run_main)
        return run_main("python -m approx", configured if configured is not None else lambda: run_pieces(args))
    finally:
        torch.set_num_threads(threads)  # main() may be called in-process (tests, notebooks)
