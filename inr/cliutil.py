"""Shared pieces of the five command-line tools (``inr``, ``python -m approx/pde/tomography/classify``).

- number parsers for argparse that accept only finite numbers in a range (:func:`number`,
  :func:`positive_int`, :func:`positive_float`);
- :func:`run_main`: calls a command and turns the errors a user can cause -- ``ValueError`` and its
  subclasses (``SignalError``, ``RunError``, ``CheckpointError``, ``DataError``, ...), ``FileExistsError``,
  ``FileNotFoundError``, ``PermissionError`` and other ``OSError``, ``DivergenceError`` -- into one line
  on stderr and exit code 2 (:data:`EXIT_USAGE`); Ctrl-C gives exit code 130.
"""
from __future__ import annotations

import argparse
import math
import sys
from typing import Callable

EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class Parser(argparse.ArgumentParser):
    """argparse that reports a usage error in one line (and exit code 2) instead of usage + message."""

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


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split()) or type(e).__name__


def user_errors() -> tuple:
    """The exception types that mean 'the user asked for something that cannot be done'."""
    from inr.train import DivergenceError

    return (ValueError, DivergenceError, FileExistsError, FileNotFoundError, PermissionError,
            NotADirectoryError, IsADirectoryError)


def run_main(prog: str, command: Callable[[], int], *, interrupted: str = "interrupted",
             extra: tuple = ()) -> int:
    """``command()`` -> its exit code; user errors (:func:`user_errors` and the ``extra`` types) -> one
    line ``PROG: error: ...`` on stderr and 2."""
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
