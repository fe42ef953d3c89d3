"""The Runge study: data protocol, target parsing, training wiring, the benchmark at a tiny setting."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.interpolate import BarycentricInterpolator

from approx.cli import main
from approx.runge import RungeConfig, classical_references, make_data, train_one
from approx.target import parse_target

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny nets: one thread is fastest (conftest)


@pytest.mark.parametrize("n_train", [11, 21, 41, 201])
def test_test_points_are_even_and_off_the_training_grid(n_train):
    x_train, x_test = make_data(n_train, 100)
    np.testing.assert_allclose(x_train, -1 + 2 * np.arange(n_train) / (n_train - 1), atol=1e-15)
    assert x_test.size == 100 and np.all(np.abs(x_test) < 1)
    np.testing.assert_allclose(np.diff(x_test), np.diff(x_test)[0], rtol=1e-9)   # evenly spaced
    assert np.min(np.abs(x_test[:, None] - x_train[None, :])) > 1e-6                # none is a training point


def test_targets_parse_safely_and_evaluate_correctly():
    x = np.linspace(-1, 1, 11)
    np.testing.assert_allclose(parse_target("runge")[2](x), 1 / (1 + 25 * x**2), rtol=1e-15)
    np.testing.assert_allclose(parse_target("abs(x)")[2](x), np.abs(x))
    np.testing.assert_allclose(parse_target("tanh(20*x) + x^2")[2](x), np.tanh(20 * x) + x**2, rtol=1e-14)
    np.testing.assert_allclose(parse_target("2")[2](x), 2.0)
    for bad in ["__import__('os').system('true')", "x.conjugate()", "lambda: 1", "y + x", "log(x)", "x +"]:
        with pytest.raises(ValueError, match="--target"):
            parse_target(bad)


def test_classical_references_show_the_runge_phenomenon():
    _, _, f = parse_target("runge")
    x_train, x_test = make_data(21)
    refs = classical_references(f, x_train, x_test)
    spline, poly, cheb = (refs[k] for k in refs)
    lagrange = BarycentricInterpolator(x_train, f(x_train))   # an independent degree-20 interpolant
    np.testing.assert_allclose(poly["fn"](x_test), lagrange(x_test), rtol=1e-6, atol=1e-6)
    assert poly["test_rmse"] > 1.0 > 0.01 > spline["test_rmse"]
    assert cheb["test_rmse"] < 0.02


def _data(target="runge", n=21):
    src, _, f = parse_target(target)
    xtr, xte = make_data(n)
    return {"target": src, "x_train": xtr, "y_train": f(xtr), "x_test": xte, "y_test": f(xte)}


def test_sg_with_zero_quadratic_rates_trains_a_conventional_network():
    """lr_g = lr_b = 0 under ReLinear init: the QNN must stay exactly conventional through fit()."""
    cfg = RungeConfig(widths=(1, 6, 6, 1), steps=40, lr_g=0.0, lr_b=0.0, seeds=1, quiet=True)
    rec = train_one("relinear-sg", 0, cfg, _data())
    for layer in rec["net"]:
        if hasattr(layer, "lin_g"):
            assert torch.equal(layer.lin_g.bias, torch.ones_like(layer.lin_g.bias))
            assert not layer.lin_g.weight.any() and not layer.lin_b.weight.any() and not layer.lin_b.bias.any()
    assert not rec["diverged"] and np.isfinite(rec["test_rmse"])


def test_a_qnn_learns_abs_x():
    cfg = RungeConfig(target="abs(x)", widths=(1, 8, 8, 1), steps=400, lr=1e-2, seeds=1, quiet=True)
    rec = train_one("relinear-sg", 0, cfg, _data("abs(x)"))
    assert rec["test_rmse"] < 0.03, rec["test_rmse"]  # a constant fit would give ~0.29


def test_bad_options_exit_2(tmp_path, capsys):
    o = str(tmp_path / "never")
    assert main(["runge", "--strategies", "regular,bogus", "--quick", "--quiet", "--out", o]) == 2
    assert "--strategies" in capsys.readouterr().err
    assert main(["runge", "--target", "open('f')", "--quick", "--quiet", "--out", o]) == 2
    assert main(["runge", "--widths", "2,4,1", "--quick", "--quiet", "--out", o]) == 2
    assert "--widths" in capsys.readouterr().err
    assert not (tmp_path / "never").exists()


def test_benchmark_runs_at_the_tiny_setting_and_pieces_read_its_models(tmp_path, capsys):
    out = tmp_path / "runge"
    p = subprocess.run([sys.executable, "benchmarks/runge.py", "--quick", "--quiet", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["summary"]) == {"regular", "relinear-sg", "relinear-sw-l1", "relinear-sw-l2", "mlp"}
    assert m["pieces_all_within_tol"] and m["config"]["steps"] == 60
    for f in ("table.md", "fits.png", "coefficients.png", "curves.png"):
        assert (out / f).stat().st_size > 0
    assert "| relinear-sg |" in (out / "table.md").read_text()
    assert not list(out.rglob("*.tmp"))
    assert main(["pieces", str(out / "models" / "relinear-sg-seed0"), "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out)["check"]["ok"]
