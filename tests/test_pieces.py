"""Exact pieces: random networks against brute force, a hand-built QNN against sympy, CLI errors."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import sympy as sp
import torch
from torch import nn

from approx import nets
from approx.cli import main
from approx.pieces import PiecesError, expand
from inr.layers import QuadraticLinear

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny nets: one thread is fastest (conftest)


def brute_force_pattern(net: nn.Sequential, x: np.ndarray) -> np.ndarray:
    """Signs of every ReLU input along ``x``: (len(x), total hidden neurons) booleans."""
    h = torch.from_numpy(x)[:, None]
    signs = []
    with torch.no_grad():
        for layer in net:
            if isinstance(layer, nn.ReLU):
                signs.append((h > 0).numpy())
            h = layer(h)
    return np.concatenate(signs, axis=1)


@pytest.mark.parametrize("depth,arch,seed", [(1, "qnn", 0), (2, "qnn", 1), (3, "qnn", 2), (4, "qnn", 3),
                                             (3, "mlp", 4)])
def test_random_networks_reproduced_and_breakpoints_match_brute_force(depth, arch, seed):
    torch.manual_seed(seed)
    net = nets.build_net([1] + [8] * depth + [1], arch, relinear=False, dtype=torch.float64)
    with torch.no_grad():  # larger random g/b terms than the default init: more curvature, more roots
        for p in net.parameters():
            p.mul_(2.0)
    pw = expand(net, -1.0, 1.0)

    x = np.random.default_rng(seed).uniform(-1, 1, 100_000)
    with torch.no_grad():
        truth = net(torch.from_numpy(x)[:, None])[:, 0].numpy()
    assert np.max(np.abs(pw(x) - truth)) <= 1e-9 * np.max(np.abs(truth))

    grid = np.linspace(-1, 1, 400_001)
    pat = brute_force_pattern(net, grid)
    change = np.flatnonzero(np.any(pat[1:] != pat[:-1], axis=1))
    bps = np.array([b.x for b in pw.breakpoints])
    assert len(pw.breakpoints) == change.size and len(pw.pieces) == change.size + 1
    assert change.size >= depth  # the test is not vacuous
    # each brute-force sign change holds exactly one breakpoint
    assert np.all((bps >= grid[change]) & (bps <= grid[change + 1]))
    if arch == "qnn":
        assert max(p.degree for p in pw.pieces) == 2 ** (depth + 1)


def hand_built() -> nn.Sequential:
    """n1 = relu(x^2 - 1/4), n2 = relu(x + 1/2);  y = n1 * (n2 + 1) + n2^2 / 2."""
    l1, l2 = QuadraticLinear(1, 2, dtype=torch.float64), QuadraticLinear(2, 1, dtype=torch.float64)
    with torch.no_grad():
        for p in list(l1.parameters()) + list(l2.parameters()):
            p.zero_()
        l1.lin_r.weight[:] = torch.tensor([[1.0], [1.0]])
        l1.lin_r.bias[:] = torch.tensor([0.0, 0.5])
        l1.lin_g.weight[:] = torch.tensor([[1.0], [0.0]])
        l1.lin_g.bias[:] = torch.tensor([0.0, 1.0])
        l1.lin_b.bias[:] = torch.tensor([-0.25, 0.0])
        l2.lin_r.weight[:] = torch.tensor([[1.0, 0.0]])
        l2.lin_g.weight[:] = torch.tensor([[0.0, 1.0]])
        l2.lin_g.bias[:] = 1.0
        l2.lin_b.weight[:] = torch.tensor([[0.0, 0.5]])
    return nn.Sequential(l1, nn.ReLU(), l2)


def test_hand_built_qnn_recovered_exactly():
    x = sp.Symbol("x", real=True)
    half = sp.Rational(1, 2)
    expected = [(-1, -half, x**2 - sp.Rational(1, 4)),
                (-half, half, (x + half) ** 2 / 2),
                (half, 1, (x**2 - sp.Rational(1, 4)) * (x + sp.Rational(3, 2)) + (x + half) ** 2 / 2)]
    pw = expand(hand_built(), -1.0, 1.0)
    assert [(p.lo, p.hi) for p in pw.pieces] == [(-1.0, -0.5), (-0.5, 0.5), (0.5, 1.0)]
    formula = pw.to_sympy(exact=True, symbol=x)
    assert len(formula.args) == 3
    for (lo, hi, poly), (expr, cond) in zip(expected, formula.args):
        assert sp.expand(expr - poly) == 0
        assert cond == sp.And(x >= -1, x <= hi)
    # both neurons switch at -1/2: one breakpoint, not two
    assert [b.x for b in pw.breakpoints] == [-0.5, 0.5]
    assert pw.breakpoints[0].neurons == (0, 1)


def test_irrational_breakpoints_are_exact_algebraic_numbers():
    net = nn.Sequential(QuadraticLinear(1, 1, dtype=torch.float64), nn.ReLU(), nn.Linear(1, 1, dtype=torch.float64))
    with torch.no_grad():
        q = net[0]
        q.lin_r.weight.fill_(1.0), q.lin_r.bias.zero_(), q.lin_g.weight.fill_(1.0), q.lin_g.bias.zero_()
        q.lin_b.weight.zero_(), q.lin_b.bias.fill_(-0.5)          # x^2 - 1/2
        net[2].weight.fill_(3.0), net[2].bias.fill_(0.25)
    pw = expand(net)
    x = sp.Symbol("x", real=True)
    f = pw.to_sympy(exact=True, symbol=x)
    ends = [cond.args[1].rhs if isinstance(cond, sp.And) else cond.rhs for _, cond in f.args]
    assert ends[0] == -sp.sqrt(2) / 2 and ends[1] == sp.sqrt(2) / 2
    assert sp.expand(f.args[0][0] - (3 * x**2 - sp.Rational(5, 4))) == 0
    assert f.args[1][0] == sp.Rational(1, 4)


def test_unsupported_networks_are_refused():
    with pytest.raises(PiecesError, match="univariate"):
        expand(nets.build_net([2, 4, 1], "qnn"))
    with pytest.raises(PiecesError, match="scalar-output"):
        expand(nets.build_net([1, 4, 2], "mlp"))
    with pytest.raises(PiecesError, match="Tanh"):
        expand(nn.Sequential(nn.Linear(1, 3), nn.Tanh(), nn.Linear(3, 1)))


def save_random(folder, widths=(1, 6, 6, 1), arch="qnn"):
    torch.manual_seed(7)
    net = nets.build_net(widths, arch, relinear=False)
    return nets.save(net, {"arch": arch, "widths": list(widths), "compact": False, "relinear": False,
                           "domain": [-1.0, 1.0]}, folder)


def test_cli_formats_and_tolerance_exit_code(tmp_path, capsys):
    d = save_random(tmp_path / "m")
    assert main(["pieces", str(d), "--format", "json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["check"]["ok"] and out["check"]["relative_error"] <= 1e-9
    assert len(out["pieces"]) == out["n_pieces"] == len(out["breakpoints"]) + 1
    assert main(["pieces", str(d / "model.pt"), "--format", "latex"]) == 0
    assert "\\begin{cases}" in capsys.readouterr().out
    assert main(["pieces", str(d), "--out", str(tmp_path / "t.txt")]) == 0
    assert "coefficients of x^0" in (tmp_path / "t.txt").read_text()
    capsys.readouterr()
    # rounding makes the error small but not zero: --tol 0 must fail with exit code 1
    assert main(["pieces", str(d), "--tol", "0", "--format", "json"]) == 1
    assert "--tol" in capsys.readouterr().err


def test_cli_user_errors_exit_2(tmp_path, capsys):
    d = save_random(tmp_path / "multi", widths=(2, 4, 1))
    assert main(["pieces", str(d)]) == 2
    assert "univariate" in capsys.readouterr().err
    d = save_random(tmp_path / "bad")
    (d / "model.pt").write_bytes(b"not a checkpoint at all")
    assert main(["pieces", str(d)]) == 2
    err = capsys.readouterr().err
    assert "model.pt" in err and "Traceback" not in err
    (tmp_path / "nocfg").mkdir()
    torch.save({}, tmp_path / "nocfg" / "model.pt")
    assert main(["pieces", str(tmp_path / "nocfg")]) == 2
    assert "config.json" in capsys.readouterr().err
    assert main(["pieces", str(tmp_path / "missing")]) == 2


def test_cli_process_exit_code_on_corrupt_checkpoint(tmp_path):
    d = save_random(tmp_path / "bad")
    (d / "model.pt").write_bytes(b"\x00garbage")
    p = subprocess.run([sys.executable, "-m", "approx", "pieces", str(d)], cwd=ROOT, capture_output=True,
                       text=True, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    assert p.returncode == 2 and "model.pt" in p.stderr and "Traceback" not in p.stderr
