"""Shared pieces of the five command-line tools (``inr``, ``python -m approx/pde/tomography/classify``).

- number parsers for argparse that accept only finite numbers in a range (:func:`number`,
  :func:`positive_int`, :func:`positive_float`);
- the options every tool shares, named and parsed the same way everywhere: :func:`add_common`
  (``--device --seed --threads --out --quiet``) on the parser of each command that runs, and
  :func:`add_version` (``--version``) on each tool's top-level parser; :class:`Parser` reports usage
  errors in one line (exit code 2) and its ``--help`` shows every default (:class:`HelpFormatter`);
- :func:`run_main`: calls a command and turns the errors a user can cause -- the project's own
  :class:`inr.errors.InputError` and its subclasses (``SignalError``, ``RunError``, ``CheckpointError``,
  ``DataError``, ...), ``DivergenceError``, and the ``OSError`` a user causes (missing file, permission,
  disk full, ...) -- into one line on stderr and exit code 2 (:data:`EXIT_USAGE`); Ctrl-C gives exit code
  130.  Any other exception (a plain ``ValueError``, ``TypeError``, ``KeyError`` ...) is a bug in the
  toolkit and keeps its traceback.
"""
from __future__ import annotations

import argparse
import math
import os
import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Appends ``(default: X)`` to every option's help, except where the help already names its default
    or there is nothing to show (no default, or an on/off flag that is off)."""

    def _format_action(self, action):
        if (action.help is None and action.option_strings and action.default not in (None, False)
                and action.default is not argparse.SUPPRESS):
            action.help = "(default: %(default)s)"   # an option without help text still shows its default
        return super()._format_action(action)

    def _get_help_string(self, action):
        text = action.help or ""
        if ("default" in text.lower() or action.default is None or action.default is False
                or action.default is argparse.SUPPRESS or isinstance(action, argparse._VersionAction)
                or (isinstance(action.default, (list, tuple)) and not action.default)):
            return text
        return super()._get_help_string(action)


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2) instead of usage + message,
    and shows the defaults in ``--help`` (:class:`HelpFormatter`; also for its sub-command parsers when
    ``add_subparsers(parser_class=Parser)``)."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def number(kind: type, name: str, low=None, high=None, *, low_open: bool = False, allow_none: bool = False):
    """An argparse ``type``: a finite ``kind`` (int or float) with ``low <= v <= high`` (``low < v`` with
    ``low_open``); ``allow_none``: 'none' / 'inf' give None (no limit)."""
    def parse(s):
        if allow_none and str(s).lower() in ("none", "inf"):
            return None
        try:
            v = kind(s)
        except (TypeError, ValueError):
            article = "an" if kind is int else "a"
            what = "integer" if kind is int else "number"
            raise argparse.ArgumentTypeError(f"{name} must be {article} {what}, got {s!r}") from None
        if kind is float and not math.isfinite(v):
            raise argparse.ArgumentTypeError(f"{name} must be a finite number, got {s}")
        if low is not None and (v <= low if low_open else v < low):
            raise argparse.ArgumentTypeError(f"{name} must be {'>' if low_open else '>='} {low}, got {s}")
        if high is not None and v > high:
            raise argparse.ArgumentTypeError(f"{name} must be <= {high}, got {s}")
        return v
    return parse


def positive_int(name: str, high=None):
    return number(int, name, 1, high)


def positive_float(name: str, allow_none: bool = False):
    return number(float, name, 0, low_open=True, allow_none=allow_none)


def open_fraction(name: str):
    """An argparse ``type``: a number strictly between 0 and 1."""
    inner = number(float, name, 0, low_open=True)

    def parse(s):
        v = inner(s)
        if v >= 1:
            raise argparse.ArgumentTypeError(f"{name} must be < 1, got {s}")
        return v
    return parse


def max_threads() -> int:
    """The largest ``--threads`` accepted: 4 x the CPU count (at least 16)."""
    return max(16, 4 * (os.cpu_count() or 1))


def threads_arg(s):
    """``--threads``: 'auto' or a positive integer up to :func:`max_threads`."""
    if str(s).lower() == "auto":
        return "auto"
    try:
        v = int(s)
    except (TypeError, ValueError):
        v = 0
    if v < 1:
        raise argparse.ArgumentTypeError(f"--threads must be a positive integer or 'auto', got {s!r}")
    if v > max_threads():
        raise argparse.ArgumentTypeError(f"--threads must be <= {max_threads()} (4 x the CPU cores of this "
                                         f"machine, at least 16), got {s!r}")
    return v


THREADS_HELP = ("CPU threads for torch; 'auto' = every core, or only the cores left free when other "
                "processes are running right now (inr.train.resolve_threads)")


def add_version(p: argparse.ArgumentParser) -> None:
    """``--version``: prints ``PROG VERSION`` (the package version) and exits 0."""
    from inr import __version__

    p.add_argument("--version", action="version", version=f"%(prog)s {__version__}",
                   help="print the version and exit")


# add_common's keywords and their defaults: the option defaults, then the help texts
COMMON_DEFAULTS = {"device": "auto", "seed": 0, "threads": "auto", "out": None,
                   "device_help": "auto, cpu or cuda", "seed_help": "seeds python, numpy and torch",
                   "threads_help": THREADS_HELP, "out_help": "run folder to create (must not exist)",
                   "quiet_help": "no progress bar"}


def add_common(p: argparse.ArgumentParser, *, skip: tuple = (), **options) -> None:
    """Add the shared options to a command's parser: ``--device`` (auto/cpu/cuda), ``--seed`` (int),
    ``--threads`` (auto or N; see :func:`apply_threads`), ``--out`` and ``--quiet``, in that order.
    ``options``: the defaults (``device``, ``seed``, ``threads``, ``out``) and help texts (``device_help``,
    ``seed_help``, ``threads_help``, ``out_help``, ``quiet_help``) that differ from :data:`COMMON_DEFAULTS`.
    ``skip``: names of options this command does not take."""
    unknown = set(options) - set(COMMON_DEFAULTS)
    if unknown:
        raise TypeError(f"add_common() got unexpected keyword arguments: {', '.join(sorted(unknown))}")
    o = {**COMMON_DEFAULTS, **{k: v for k, v in options.items() if not (k == "out_help" and v is None)}}
    if "device" not in skip:
        p.add_argument("--device", default=o["device"], help=o["device_help"])
    if "seed" not in skip:
        p.add_argument("--seed", type=number(int, "--seed", 0), default=o["seed"], help=o["seed_help"])
    if "threads" not in skip:
        p.add_argument("--threads", type=threads_arg, default=o["threads"], help=o["threads_help"])
    if "out" not in skip:
        p.add_argument("--out", default=o["out"], help=o["out_help"])
    if "quiet" not in skip:
        p.add_argument("--quiet", action="store_true", help=o["quiet_help"])


LBFGS_OPTIONS = ("lbfgs_steps", "lbfgs_fraction", "lbfgs_lr", "lbfgs_history", "lbfgs_iter")


def add_lbfgs(p: argparse.ArgumentParser, *, full_batch_help: str = "the full-batch loss",
              suppress: bool = False) -> None:
    """The L-BFGS stage options of every regression tool (:class:`inr.train.TrainConfig`'s ``lbfgs_*``
    fields, same names, defaults and checks everywhere): ``--lbfgs-steps --lbfgs-fraction --lbfgs-lr
    --lbfgs-history --lbfgs-iter``.  :func:`lbfgs_options` reads them back as TrainConfig keywords.
    ``suppress``: an option not given is absent from the parsed namespace (a config file's value stands)."""
    from inr.train import TrainConfig

    d = TrainConfig()

    def default(v):
        return {"default": argparse.SUPPRESS} if suppress else {"default": v}

    def shown(text, v):
        return f"{text} (default: {v})" if suppress else text

    g = p.add_argument_group("L-BFGS stage (after the Adam steps; off by default)")
    g.add_argument("--lbfgs-steps", type=number(int, "--lbfgs-steps", 0), metavar="N", **default(d.lbfgs_steps),
                   help=shown(f"outer L-BFGS steps after the Adam steps, on {full_batch_help} (0: no L-BFGS stage)",
                              d.lbfgs_steps))
    g.add_argument("--lbfgs-fraction", type=open_fraction("--lbfgs-fraction"), metavar="F",
                   **default(d.lbfgs_fraction),
                   help=shown("with --seconds: the share of the wall budget given to the L-BFGS stage",
                              d.lbfgs_fraction))
    g.add_argument("--lbfgs-lr", type=positive_float("--lbfgs-lr"), **default(d.lbfgs_lr),
                   help=shown("L-BFGS step length (strong-Wolfe line search)", d.lbfgs_lr))
    g.add_argument("--lbfgs-history", type=positive_int("--lbfgs-history"), **default(d.lbfgs_history),
                   help=shown("L-BFGS curvature pairs kept", d.lbfgs_history))
    g.add_argument("--lbfgs-iter", type=positive_int("--lbfgs-iter"), **default(d.lbfgs_iter),
                   help=shown("L-BFGS iterations per outer step (history row, guard and checkpoint per outer "
                              "step)", d.lbfgs_iter))


def lbfgs_options(args: argparse.Namespace) -> dict:
    """The ``lbfgs_*`` values of :func:`add_lbfgs`'s options, as TrainConfig keywords."""
    return {k: getattr(args, k) for k in LBFGS_OPTIONS}


def apply_threads(threads) -> int:
    """Set torch's CPU threads from a ``--threads`` value ('auto' -> :func:`inr.train.resolve_threads`);
    returns the previous count so in-process callers can restore it."""
    import torch

    from inr.train import resolve_threads

    before = torch.get_num_threads()
    k = resolve_threads(threads)
    if k:
        torch.set_num_threads(int(k))
    return before


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def user_errors() -> tuple:
    """The exception types that mean 'the user asked for something that cannot be done': the project's
    own :class:`inr.errors.InputError` (and subclasses) and :class:`inr.train.DivergenceError`.  The
    ``OSError`` a user causes are handled beside them in :func:`run_main`."""
    from inr.errors import InputError
    from inr.train import DivergenceError

    return (InputError, DivergenceError)


def run_main(prog: str, command: Callable[[], int], *, interrupted: str = "interrupted",
             extra: tuple = ()) -> int:
    """``command()`` -> its exit code; user errors (:func:`user_errors`, the ``extra`` types and
    ``OSError``) -> one line ``PROG: error: ...`` on stderr and 2; Ctrl-C -> 130.  Anything else
    propagates with its traceback (a bug, not a user error)."""
    try:
        return command()
    except user_errors() + tuple(extra) as e:
        print(f"{prog}: error: {one_line(e)}", file=sys.stderr)
    except OSError as e:
        where = f"{e.filename}: " if getattr(e, "filename", None) else ""
        print(f"{prog}: error: {where}{e.strerror or one_line(e)}", file=sys.stderr)
    except KeyboardInterrupt:
        print(f"{prog}: {interrupted}", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_USAGE


def parse_args(parser: argparse.ArgumentParser, argv) -> argparse.Namespace | int:
    """``parser.parse_args(argv)``, or the exit code when argparse exits (--help: 0, usage error: 2)."""
    try:
        return parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else EXIT_USAGE


def given_dests(parser: argparse.ArgumentParser, argv) -> set:
    """The ``dest`` of every option written on the command line ``argv`` (long or short form, with or
    without ``=VALUE``), looked up in ``parser`` and its sub-command parsers."""
    table: dict = {}

    def collect(p):
        for act in p._actions:   # argparse keeps no public list of a parser's actions
            for s in act.option_strings:
                table[s] = act.dest
            if isinstance(act, argparse._SubParsersAction):
                for sub in act.choices.values():
                    collect(sub)

    collect(parser)
    out = set()
    for tok in argv or []:
        if tok.startswith("-"):
            key = tok.split("=", 1)[0]
            if key in table:
                out.add(table[key])
    return out


def apply_config_file(args: argparse.Namespace, parser: argparse.ArgumentParser, argv, *,
                      section: str | None = None, skip: tuple = (), rename: dict | None = None) -> argparse.Namespace:
    """``--config FILE`` for a command line whose option names are its config's field names: every value
    of the file (JSON or TOML; a run's config.json, whose ``section`` table is used when present) replaces
    the option's default unless that option was given on the command line.  Unknown keys are an error."""
    path = getattr(args, "config", None)
    if not path:
        return args
    from inr.config import read_file
    from inr.errors import InputError

    data = read_file(path)
    if section and isinstance(data.get(section), dict):
        data = data[section]
    given = given_dests(parser, argv)
    known = set(vars(args))
    for k, v in data.items():
        k = (rename or {}).get(k, k)
        if k in skip or k in ("config", "set"):
            continue
        if k not in known:
            raise InputError(f"--config {path}: unknown option {k!r}")
        if k in given:
            continue
        cur = getattr(args, k)
        if isinstance(v, list) and isinstance(cur, tuple):
            v = tuple(v)
        elif isinstance(v, list) and isinstance(cur, str):
            v = ",".join(str(x) for x in v)       # a list option the command line writes comma-separated
        elif isinstance(v, dict) and isinstance(cur, list):
            v = list(v.items())                   # KEY=VALUE pairs
        setattr(args, k, v)
    return args


def set_value(s: str):
    """A ``--set`` value: int, float, true/false, none, else the string."""
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


def key_value(s):
    """An argparse ``type`` for ``--set KEY=VALUE`` -> ``(key, value)`` (dashes in the key read as _)."""
    if "=" not in s:
        raise argparse.ArgumentTypeError(f"--set takes key=value, got {s!r}")
    k, v = s.split("=", 1)
    return k.strip().replace("-", "_"), set_value(v.strip())


def add_config_options(p: argparse.ArgumentParser, set_help: str) -> None:
    """``--config FILE`` and ``--set KEY=VALUE`` (repeatable), named and parsed the same in every tool."""
    p.add_argument("--config", metavar="FILE",
                   help="options from a JSON or TOML file (a run's config.json reproduces that run); flags given "
                        "on the command line override it")
    p.add_argument("--set", dest="set", type=key_value, action="append", default=[], metavar="KEY=VALUE",
                   help=set_help)


def apply_sets(args: argparse.Namespace, extra: dict | None = None) -> argparse.Namespace:
    """``--set KEY=VALUE``: a key that names an option of ``args`` sets it; any other goes to ``extra``
    (e.g. a model's hyper-parameters), or is an error when ``extra`` is None."""
    from inr.errors import InputError

    skip = {"set", "config"}
    for k, v in getattr(args, "set", None) or []:
        if k in vars(args) and k not in skip:
            setattr(args, k, v)
        elif extra is not None:
            extra[k] = v
        else:
            raise InputError(f"--set {k}: no such option (the options are: "
                             f"{', '.join(sorted(x for x in vars(args) if x not in skip))})")
    return args
