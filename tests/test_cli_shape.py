"""One CLI shape: the five tools share --device --seed --threads --out --quiet --version, show their
defaults in --help, and report a bad number in one line with exit code 2."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

import inr
from inr.cliutil import HelpFormatter, Parser, add_common, threads_arg

ROOT = Path(__file__).resolve().parents[1]


def _mains():
    from approx.cli import main as approx_main
    from classify.cli import main as classify_main
    from inr.cli import main as inr_main
    from pde.__main__ import main as pde_main
    from tomography.cli import main as ct_main

    return {"inr": (inr_main, "fit"), "approx": (approx_main, "runge"), "pde": (pde_main, "solve"),
            "tomography": (ct_main, "recon"), "classify": (classify_main, "train")}


TOOLS = ["inr", "approx", "pde", "tomography", "classify"]


@pytest.mark.parametrize("tool", TOOLS)
def test_help_shows_the_common_options_with_defaults(tool, capsys):
    main, command = _mains()[tool]
    assert main(["--help"]) == 0
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    for flag in ("--device", "--seed", "--threads", "--out", "--quiet"):
        assert flag in text, flag
    assert "(default: auto)" in text or "(default: 1)" in text    # --threads (approx: 1)
    assert text.count("default") >= 5


@pytest.mark.parametrize("tool", TOOLS)
def test_version(tool, capsys):
    main, _ = _mains()[tool]
    assert main(["--version"]) == 0
    assert capsys.readouterr().out.strip().endswith(inr.__version__)


@pytest.mark.parametrize("tool,args", [("inr", ["fit", "--steps", "x"]), ("approx", ["runge", "--seed", "1.5"]),
                                       ("pde", ["solve", "--steps", "-3"]), ("tomography", ["recon", "--seed", "abc"]),
                                       ("classify", ["train", "--threads", "0"])])
def test_bad_number_is_one_line_exit_2(tool, args, capsys):
    main, _ = _mains()[tool]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and "Traceback" not in err


def test_version_from_the_command_line():
    r = subprocess.run([sys.executable, "-m", "pde", "--version"], cwd=ROOT, capture_output=True, text=True,
                       env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert r.returncode == 0 and r.stdout.strip() == f"python -m pde {inr.__version__}"


def test_common_helper():
    p = Parser(prog="t")
    add_common(p, seed=3, skip=("out",))
    a = p.parse_args(["--threads", "2"])
    assert (a.device, a.seed, a.threads, a.quiet) == ("auto", 3, 2, False) and not hasattr(a, "out")
    assert threads_arg("auto") == "auto"
    assert p.formatter_class is HelpFormatter and "(default: 3)" in " ".join(p.format_help().split())
