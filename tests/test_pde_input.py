"""pde solve: bad options, bad expressions and sizes beyond the memory estimate end with one line on stderr,
exit code 2, no traceback and nothing written (in-process main, run in an empty working directory so the
default run folder runs/... would show up)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from pde.__main__ import main

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SMALL = ["--params", "300", "--model", "siren", "--steps", "2", "--lbfgs-steps", "0", "--quiet", "--threads", "1"]
BOX = ["--equation", "poisson", "--domain", "0,1x0,2"]

CASES = [
    # model options (issue 23: ZeroDivisionError, shape errors, nan)
    (["--hidden", "0", "--params", "0"], "--hidden"),
    (["--hidden", "-4", "--params", "0"], "--hidden"),
    (["--hidden-layers", "-1"], "--hidden-layers"),
    (["--hidden", "1000000", "--params", "0"], "--hidden"),
    (["--w0", "nan"], "--w0"),
    (["--w0", "inf"], "--w0"),
    (["--w0", "1e-310"], "--w0"),
    (["--w0-first", "-2"], "--w0-first"),
    (["--rank", "0", "--params", "0", "--model", "lrnn-siren"], "--rank"),
    # sizes: refused by their bounds or by the memory estimate, before anything is allocated
    (["--points", "1000000000"], "--points"),
    (["--points", "9000000"], "GB"),
    (["--lbfgs-points", "9000000", "--lbfgs-steps", "1"], "GB"),
    (["--lbfgs-points", "-5"], "--lbfgs-points"),
    (["--rad-pool", "100000", "--sampling", "rad"], "--rad-pool"),
    (["--params", "1000000000"], "--params"),
    (["--params", "90000000"], "GB"),
    (["--eval-res", "100000"], "--eval-res"),
    (["--eval-res", "1"], "--eval-res"),
    (["--boundary-points", "0"], "--boundary-points"),
    (["--max-memory-gb", "nan"], "--max-memory-gb"),
    # expressions and domains
    ([*BOX, "--source", "__import__('os').system('true')"], "--source"),
    ([*BOX, "--source", "(x-x+9)**(x-x+9)**(x-x+9)"], "exponent"),
    ([*BOX, "--source", "Max(9,9)**Max(9,9)**Max(9,9)"], "exponent"),
    ([*BOX, "--source", "x.real"], "--source"),
    ([*BOX, "--source", "q*x"], "unknown name"),
    ([*BOX, "--source", "1e400"], "--source"),
    ([*BOX, "--source", "sin(x"], "--source"),
    ([*BOX, "--source", "x" * 600], "--source"),
    ([*BOX, "--exact", "log(-x)"], "--exact"),
    ([*BOX, "--boundary-values", "1/(y-y)"], "--boundary-values"),
    ([*BOX, "--source", "t"], "unknown name"),                      # no t in a Poisson problem
    (["--equation", "poisson", "--domain", "1,0"], "--domain"),
    (["--equation", "poisson", "--domain", "0,1x0,1x0,1x0,1"], "--domain"),
    (["--equation", "poisson", "--domain", "a,b"], "--domain"),
    (["--equation", "poisson", "--domain", "0,inf"], "--domain"),
    (["--equation", "heat"], "--initial"),
    (["--equation", "poisson", "--k", "3"], "--k"),
    (["--equation", "heat", "--initial", "0", "--kappa", "0"], "--kappa"),
    (["--equation", "heat", "--initial", "0", "--t-end", "-1"], "--t-end"),
    (["--equation", "laplace"], "--equation"),
    (["--source", "1"], "--equation"),                               # an expression without an equation
    (["--problem", "nope"], "unknown problem"),
]


@pytest.mark.parametrize("args,needle", CASES, ids=[" ".join(a)[:60] for a, _ in CASES])
def test_bad_input_exit_2_one_line_nothing_written(args, needle, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    out = tmp_path / "out"
    assert main(["solve", *SMALL, *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err and lines[0].startswith("python -m pde") and ": error: " in lines[0]
    assert needle in lines[0], lines[0]
    assert os.listdir(tmp_path) == []           # no run folder, no staging folder, no default runs/


def test_default_run_folder_needs_nothing_on_bad_input(tmp_path, monkeypatch, capsys):
    """Without --out the default is runs/pde-...; a bad input still writes nothing."""
    monkeypatch.chdir(tmp_path)
    assert main(["solve", *SMALL, "--hidden", "0", "--params", "0"]) == 2
    assert os.listdir(tmp_path) == []
    assert len(capsys.readouterr().err.strip().splitlines()) == 1


def test_subprocess_bad_expression_has_no_traceback(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pde", "solve", *BOX, "--source", "(x-x+9)**(x-x+9)**(x-x+9)"],
                       capture_output=True, text=True, cwd=tmp_path, timeout=120,
                       env={**os.environ, "PYTHONPATH": ROOT, "OMP_NUM_THREADS": "1"})
    assert r.returncode == 2 and "Traceback" not in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert os.listdir(tmp_path) == []


def test_python_api_refuses_a_failing_callable_before_training():
    from inr.errors import InputError
    from pde import solve
    from pde.equations import EquationSpec

    with pytest.raises(InputError, match="--source"):
        solve(EquationSpec(source=lambda X: 1 / 0), model="siren", params=300, steps=2)
    with pytest.raises(InputError, match="--boundary-values"):
        solve(EquationSpec(boundary=lambda X: X[:, :1] * float("nan")), model="siren", params=300, steps=2)
    with pytest.raises(InputError, match="--hidden"):
        solve("poisson2d", model="siren", params=None, hyper={"hidden": 0})
