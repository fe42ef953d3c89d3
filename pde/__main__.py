"""``python -m pde solve ...``: solve a PDE with a PINN and write a run folder.

Built-in problems (``--problem poisson2d --n 4``) or one written down (``--equation poisson|helmholtz|heat
--domain 0,1x0,2 --source 1 [--boundary-values G] [--initial U0] [--exact U]``).  ``python -m pde list`` prints
the problems and models.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


from inr.cliutil import (Parser, add_common, add_config_options, add_lbfgs, add_version, apply_threads, given_dests,
                         lbfgs_options, number, parse_args, run_main)
from inr.errors import InputError
from inr.models import names as registry_names, spec
from inr.runs import RunError, RunFolder, check_out

from . import models, problems
from .operators import LAPLACIAN_MODES
from .equations import EQUATIONS, EquationSpec
from .solve import DTYPES, SolveConfig, solve, write_files

# model options: flag -> (type, the registry's keyword)
def _hyper_flags() -> dict:
    """``{flag name: type}`` of the model hyper-parameters of every family with PDE defaults, from the
    specs (numbers and on/off switches; other options through --set)."""
    out = {}
    for name in registry_names("pde"):
        for h in spec(name).hypers:
            if h.type in (int, float, bool):
                out.setdefault("spline_order" if (name, h.name) == ("kan", "k") else h.name,
                               None if h.type is bool else h.type)
    return out


HYPER = _hyper_flags()
HYPER_KEY = {"spline_order": "k"}   # flag -> the model's keyword (KAN's spline order k; --k is Helmholtz's wave number)


def _parser() -> argparse.ArgumentParser:
    p = Parser(prog="python -m pde", description=__doc__.split("\n")[0])
    add_version(p)
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)
    sub.add_parser("list", help="print the problems and models")
    s = sub.add_parser("solve", help="train a PINN and write a run folder")
    s.add_argument("--problem", default="poisson2d", help=f"a built-in problem, one of: {', '.join(problems.PROBLEMS)}")
    s.add_argument("--n", type=number(int, "--n", 1, 1000), default=None,
                   help="frequency n of poisson2d's u* = sin(n pi x) sin(n pi y) (default 1); with --equation, the "
                        "solution's frequency hint for the model defaults (default 1; Helmholtz ceil(k L / pi))")
    e = s.add_argument_group("a problem written down (pde.equations; replaces --problem)")
    e.add_argument("--equation", choices=EQUATIONS, default=None,
                   help="poisson: -Laplace(u) = f; helmholtz: -Laplace(u) - k^2 u = f; heat: u_t = kappa Laplace(u) + f")
    e.add_argument("--domain", default="0,1x0,1", help="the space box: lo,hi per axis joined by x (1-3 axes)")
    e.add_argument("--source", default=None, metavar="EXPR",
                   help="f as an expression in x, y, z (and t); default: from --exact, else 0")
    e.add_argument("--boundary-values", default=None, metavar="EXPR",
                   help="Dirichlet values g on the boundary; default: --exact, else 0")
    e.add_argument("--initial", default=None, metavar="EXPR", help="heat: u at t = 0; default: --exact")
    e.add_argument("--exact", default=None, metavar="EXPR",
                   help="the exact solution (optional): the error is measured against it, and the source, boundary "
                        "and initial values default to the ones it implies; without it, against a "
                        "finite-difference reference")
    e.add_argument("--k", type=number(float, "--k", 0, 1e6), default=0.0, help="helmholtz: wave number k")
    e.add_argument("--kappa", type=number(float, "--kappa", 0, 1e6, low_open=True), default=1.0, help="heat: diffusivity")
    e.add_argument("--t-end", type=number(float, "--t-end", 0, 1e6, low_open=True), default=1.0, help="heat: t in [0, T]")
    e.add_argument("--residual-scale", type=number(float, "--residual-scale", 0, low_open=True), default=None,
                   help="the residual is divided by it (default max(1, k^2, RMS of f))")
    s.add_argument("--model", default="lrnn-siren", help=f"one of: {', '.join(models.MODELS)}")
    s.add_argument("--params", type=number(int, "--params", 0, 100_000_000), default=16000,
                   help="parameter budget (picks the width); 0 = use --hidden/--rank as given")
    s.add_argument("--steps", type=number(int, "--steps", 1), default=None,
                   help="Adam steps (upper limit; --lbfgs-steps follow them); default 1,000,000 with --seconds "
                        "(the budget decides), else 2000")
    s.add_argument("--seconds", type=number(float, "--seconds", 0, low_open=True, allow_none=True), default=None, help="wall-clock budget; stops at whichever comes first")
    s.add_argument("--lr", type=number(float, "--lr", 0, low_open=True), default=None,
                   help="Adam learning rate (cosine decay to lr-final x lr); default per model: "
                        + ", ".join(f"{k} {spec(k).task('pde').lr:g}" for k in registry_names("pde")))
    s.add_argument("--lr-final", type=number(float, "--lr-final", 0, low_open=True), default=0.1, help="final learning rate as a fraction of --lr")
    s.add_argument("--schedule", default="cosine", choices=("cosine", "exponential", "constant"))
    s.add_argument("--batch", "--points", dest="points", type=number(int, "--points", 1, 10_000_000), default=1024, help="interior collocation points")
    s.add_argument("--boundary-points", type=number(int, "--boundary-points", 1, 10_000_000), default=None,
                   help="boundary points (penalty); default points/4")
    s.add_argument("--max-memory-gb", type=number(float, "--max-memory-gb", 0, low_open=True), default=4.0,
                   help="refuse a run whose rough memory estimate (points x features per point x layers, parameters "
                        "and optimiser state, evaluation grid) is above this")
    s.add_argument("--boundary", default="exact", choices=("exact", "penalty"),
                   help="exact: u = lift + x(1-x)y(1-y)-bubble * net; penalty: weighted boundary loss")
    s.add_argument("--penalty", type=number(float, "--penalty", 0, low_open=True), default=100.0, help="boundary loss weight (--boundary penalty)")
    s.add_argument("--resample", action=argparse.BooleanOptionalAction, default=None,
                   help="draw new uniform collocation points every Adam step (default with --sampling uniform; "
                        "--no-resample: one fixed set)")
    s.add_argument("--laplacian", default="auto", choices=LAPLACIAN_MODES,
                   help="forward: value, gradient and Laplacian carried through the network in one pass "
                        "(pde.forward); reverse: autograd, d + 1 backward passes (its training gradient "
                        "through LayerNorm, i.e. LRNN, is wrong with current torch: docs/methods.md section 5); "
                        "auto: forward where every module has a rule and it is not slower, else reverse (KAN)")
    s.add_argument("--sampling", default="uniform", choices=("uniform", "rad"),
                   help="collocation points: uniform (fixed, or every step with --resample) or rad: every "
                        "--rad-every steps, draw from a uniform pool of --rad-pool x --points with probability "
                        "~ |r|^k / mean|r|^k + c (residual-based adaptive sampling, Wu et al. 2023)")
    s.add_argument("--clock", choices=("wall", "cpu"), default="wall",
                   help="what --seconds and the times in the history measure: wall time, or this process's CPU "
                        "time (all threads; with --threads 1, what an unshared core would take on a busy machine)")
    s.add_argument("--lbfgs-points", type=number(int, "--lbfgs-points", 0, 10_000_000), default=None, metavar="N",
                   help="L-BFGS stage on N uniform points drawn at the switch (0: the Adam stage's points); default "
                        + ", ".join(f"{k} {spec(k).task('pde').lbfgs_points}" for k in registry_names("pde")))
    s.add_argument("--rad-every", type=number(int, "--rad-every", 1), default=100, metavar="N",
                   help="rad: redraw the points every N steps")
    s.add_argument("--rad-pool", type=number(int, "--rad-pool", 1), default=8, metavar="M",
                   help="rad: candidate pool size as a multiple of --points")
    s.add_argument("--rad-k", type=number(float, "--rad-k", 0), default=1.0, help="rad: exponent k")
    s.add_argument("--rad-c", type=number(float, "--rad-c", 0), default=1.0, help="rad: uniform share c")
    s.add_argument("--dtype", default="float32", choices=tuple(DTYPES), help="floating-point type of the model")
    s.add_argument("--eval-res", type=number(int, "--eval-res", 2), default=None,
                   help="evaluation grid points per axis (1-D 8193, 2-D 256, 3-D 64); without --exact: intervals of the "
                        "coarsest finite-difference grid along the longest side (reference on 2x, checked on 4x; "
                        "default 2-D 128, 1-D 1024, 3-D 12, heat 32/128/8)")
    s.add_argument("--eval-every", type=number(int, "--eval-every", 0), default=0,
                   help="log the relative L2 error every N steps (0: end only)")
    add_lbfgs(s, full_batch_help="--lbfgs-points uniform points drawn at the switch")
    # the study's recipe is the default: L-BFGS for 70 % of a --seconds budget (--lbfgs-steps 0 turns it off)
    s.set_defaults(lbfgs_steps=None, lbfgs_fraction=0.7)
    for group in s._action_groups:
        if group.title and group.title.startswith("L-BFGS stage"):
            group.title = "L-BFGS stage (after the Adam steps; on by default: the Poisson study's recipe)"
    for action in s._actions:
        if action.dest == "lbfgs_steps":
            action.help = ("outer L-BFGS steps after the Adam steps, on --lbfgs-points uniform points drawn at the "
                           "switch; default 1,000,000 with --seconds (the budget decides), else max(1, --steps // 10); "
                           "0: no L-BFGS stage")
    add_config_options(s, "any option of SolveConfig by its name (e.g. --set rad_every=50) or a model "
                          "hyper-parameter of the family's spec (e.g. --set harmonics=8); repeatable")
    add_common(s, out_help="run folder to create, must not exist (metrics.json, history.csv, solution.png, "
                           "model.pt); default runs/pde-<problem>-<model>-<time>")
    s.add_argument("--checkpoint-every", type=number(int, "--checkpoint-every", 0), default=0, metavar="N",
                   help="checkpoint every N steps (needs --out; kept in the hidden staging folder after an "
                        "interruption so --resume can continue; 0: off)")
    s.add_argument("--resume", action="store_true",
                   help="continue the interrupted solve at --out from its last checkpoint (same options)")
    g = s.add_argument_group("model options (defaults: each family's spec for task pde, frequencies scaled with n)")
    for name, typ in HYPER.items():
        flag = "--" + name.replace("_", "-")
        if typ is None:
            g.add_argument(flag, action="store_true", default=None)
        else:
            g.add_argument(flag, type=number(typ, flag), default=None)
    return p


def config_from_args(a: argparse.Namespace) -> SolveConfig:
    hyper = {HYPER_KEY.get(k, k): getattr(a, k) for k in HYPER if getattr(a, k) is not None}
    equation = None
    if a.equation is not None:
        equation = EquationSpec(equation=a.equation, domain=a.domain, source=a.source, boundary=a.boundary_values,
                                initial=a.initial, exact=a.exact, k=a.k, kappa=a.kappa, t_end=a.t_end, n=a.n,
                                residual_scale=a.residual_scale)
    else:
        given = [f for f, v in (("--source", a.source), ("--boundary-values", a.boundary_values),
                                ("--initial", a.initial), ("--exact", a.exact), ("--residual-scale", a.residual_scale))
                 if v is not None]
        if given:
            raise InputError(f"{', '.join(given)} describe a problem written down; add --equation poisson|helmholtz|heat")
    return SolveConfig(problem=a.problem, n=a.n or 1, equation=equation, model=a.model, params=a.params or None,
                       hyper=hyper, boundary=a.boundary, penalty=a.penalty, points=a.points,
                       boundary_points=a.boundary_points, resample=a.resample, steps=a.steps, seconds=a.seconds,
                       lr=a.lr, lr_final=a.lr_final, schedule=a.schedule, seed=a.seed, device=a.device, dtype=a.dtype,
                       eval_res=a.eval_res, eval_every=a.eval_every, checkpoint_every=a.checkpoint_every,
                       laplacian=a.laplacian, quiet=a.quiet, sampling=a.sampling, rad_every=a.rad_every,
                       rad_pool=a.rad_pool, rad_k=a.rad_k, rad_c=a.rad_c, lbfgs_points=a.lbfgs_points,
                       clock=a.clock, max_memory_gb=a.max_memory_gb, **lbfgs_options(a))


def default_out(cfg: SolveConfig, root: str = "runs") -> str:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    return str(Path(root) / f"pde-{cfg.problem_name}-{cfg.model}-{stamp}")


def set_threads(spec) -> None:
    """Kept for callers of the old name: :func:`inr.cliutil.apply_threads`."""
    apply_threads(spec)


def config_with_file(a, parser, argv) -> SolveConfig:
    """The command line's SolveConfig over ``--config FILE`` (a run's config.json: its "solve" table, or a
    table of SolveConfig fields), then ``--set``: only the options written on the command line replace the
    file's values."""
    from dataclasses import asdict, fields

    from inr.config import read_file

    names = {f.name for f in fields(SolveConfig)}
    sets = dict(a.set or [])
    cfg = config_from_args(a)
    if not a.config and not sets:
        return cfg
    base = asdict(cfg)
    base["equation"] = cfg.equation.to_dict() if cfg.equation is not None else None
    if a.config:
        data = read_file(a.config)
        data = data["solve"] if isinstance(data.get("solve"), dict) else data
        unknown = sorted(set(data) - names)
        if unknown:
            raise InputError(f"--config {a.config}: unknown option {unknown[0]!r}")
        given = given_dests(parser, argv)
        mine = {k: base[k] for k in names if k in given}
        if given & set(HYPER):
            mine["hyper"] = {**(data.get("hyper") or {}), **cfg.hyper}
        if given & EQUATION_DESTS:
            mine["equation"] = base["equation"]
        base = {**base, **data, **mine}
    for k, v in sets.items():
        if k in names and k not in ("hyper", "equation"):
            base[k] = v
        else:
            base["hyper"] = {**(base.get("hyper") or {}), k: v}
    eq = base.pop("equation", None)
    return SolveConfig(**base, equation=EquationSpec(**eq) if isinstance(eq, dict) else None)


EQUATION_DESTS = {"equation", "domain", "source", "boundary_values", "initial", "exact", "k", "kappa", "t_end",
                  "residual_scale"}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = _parser()
    a = parse_args(parser, argv)
    if isinstance(a, int):   # --help / --version (0) or a usage error (2), already reported
        return a
    if a.command == "list":
        print("problems:", ", ".join(problems.PROBLEMS))
        print("equations:", ", ".join(EQUATIONS), "(--equation, with --domain --source --boundary-values --initial --exact)")
        print("models:  ", ", ".join(models.MODELS))
        return 0
    return run_main("python -m pde", lambda: _solve(a, config_with_file(a, parser, argv)))


def _solve(a, cfg: SolveConfig) -> int:
    """``cfg`` validated (SolveConfig.__post_init__) -> solve -> the run folder -> print."""
    out = a.out or default_out(cfg)
    if (a.checkpoint_every or a.resume) and not a.out:
        raise RunError("--checkpoint-every and --resume need --out (the checkpoint lives in its staging folder)")
    apply_threads(a.threads)
    if a.checkpoint_every or a.resume:
        with RunFolder(out, resume=a.resume) as run:   # refuses an existing --out before the solve
            sol = solve(cfg, checkpoint_path=str(run.checkpoint), resume=a.resume)
            write_files(sol, str(run.path))
    else:
        check_out(out)   # refuse an existing --out before the solve; written by Solution.save after it
        sol = solve(cfg)
        sol.save(out)
    m = sol.metrics
    print(json.dumps({k: m[k] for k in ("model", "params", "rel_l2", "max_error", "final_residual_rms",
                                        "boundary_error_rms", "seconds", "steps")}, default=str))
    print(f"run folder: {out}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
