"""pde.forward: the forward Laplacian against reverse-mode autograd, finite differences and sympy, for
every model pde builds; the ansatz rule; the training gradient; the auto/forward/reverse choice."""
import json
import os
import subprocess
import sys

import pytest
import sympy as sp
import torch
from pde_problems import HarmonicProblem
from torch import nn

import pde
from pde import forward as F
from pde import models, problems
from pde.__main__ import main
from pde.operators import Ansatz, choose_laplacian, gradient, laplacian, residual
from pde.solve import SolveConfig, solve
from inr.layers.hashgrid import HashGridEncoding
from inr.layers.lrnn import LRNNLayer
from inr.models import INR, build as inr_build

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
D64 = torch.float64


pytestmark = pytest.mark.usefixtures("torch_one_thread")   # conftest: one torch thread per test, restored after


def reverse(net, x):
    """(value, gradient (N, d), Laplacian (N, 1)) by reverse-over-reverse autograd."""
    x = x.detach().clone().requires_grad_(True)
    u = net(x)
    return u.detach(), gradient(u, x).detach(), laplacian(u, x, create_graph=False).detach()


def assert_jet_matches(net, x, rtol=1e-10):
    j = F.jet(net, x)
    v, g, lap = reverse(net, x)
    scale = 1.0 + float(lap.abs().max())
    assert (j.v - v).abs().max() <= rtol * (1.0 + float(v.abs().max()))
    assert (j.g[..., 0] - g).abs().max() <= rtol * (1.0 + float(g.abs().max()))
    assert (j.l - lap).abs().max() <= rtol * scale, float((j.l - lap).abs().max() / scale)
    return float(lap.abs().max())


# every model of pde.models.MODELS but kan (pykan, no forward rules: reverse mode) and hash (its reverse-mode
# Laplacian does not exist: compared against a twice-differentiable reference below)
SMALL = {
    "siren": {"hidden": 12, "hidden_layers": 2, "w0_first": 3.0},
    "spder": {"hidden": 12, "hidden_layers": 2, "w0_first": 3.0},
    "gauss": {"hidden": 12, "hidden_layers": 2, "scale": 2.0},
    "relu-pe": {"hidden": 12, "hidden_layers": 2, "n_freqs": 3},
    "lrnn-siren": {"rank": 6, "depth": 2},
    "lrnn-spder": {"rank": 6, "depth": 2},
    "mlp-tanh": {"hidden": 10, "hidden_layers": 2},
}


def test_small_covers_every_pde_model():
    assert set(SMALL) | {"kan", "hash"} == set(models.MODELS)


@pytest.mark.parametrize("dim", [1, 2])
@pytest.mark.parametrize("name", sorted(SMALL))
def test_forward_matches_reverse(name, dim):
    torch.manual_seed(0)
    net = models.build(name, dim, 1, dtype=D64, **SMALL[name])
    assert F.unsupported(net) == []
    x = torch.rand(50, dim, dtype=D64) * 2 - 1
    assert assert_jet_matches(net, x) > 1e-3   # not trivially zero


@pytest.mark.parametrize("name", ["siren", "lrnn-siren", "mlp-tanh"])
def test_forward_matches_reverse_with_pde_defaults(name):
    torch.manual_seed(1)
    net = models.build(name, 2, 1, params=3000, dtype=D64, **models.pde_defaults(name, 4, 2))
    assert_jet_matches(net, torch.rand(64, 2, dtype=D64) * 2 - 1)


@pytest.mark.parametrize("activation", ["sin", "spder", "spder-atan"])
def test_siren_family_activations_including_spder_at_zero(activation):
    torch.manual_seed(0)
    net = inr_build("siren", 2, 1, hidden=8, hidden_layers=1, activation=activation, dtype=D64)
    with torch.no_grad():
        net.body[0].linear.bias.zero_()
    x = torch.rand(20, 2, dtype=D64) * 2 - 1
    x[0] = 0.0                      # first-layer pre-activations exactly 0: SPDER's sqrt floor
    assert_jet_matches(net, x)
    assert torch.isfinite(F.jet(net, x).l).all()


@pytest.mark.parametrize("component", ["mlp", "harmonic"])
@pytest.mark.parametrize("band", ["component", "projection"])
@pytest.mark.parametrize("dbar", [2, 3])
@pytest.mark.parametrize("layernorm", [True, False])
@pytest.mark.parametrize("activation", ["sin", "spder", "spder-atan"])
def test_lrnn_layers(component, band, dbar, layernorm, activation):
    torch.manual_seed(dbar)
    kw = dict(dbar=dbar, width=3, harmonics=3, w0=2.0, activation=activation, component=component, band=band,
              layernorm=layernorm, dtype=D64)
    body = nn.Sequential(LRNNLayer(2, 5, is_first=True, **kw), LRNNLayer(5, 4, **kw))
    net = INR(body, nn.Linear(4, 1, dtype=D64), {"name": "test"})
    assert_jet_matches(net, torch.rand(40, 2, dtype=D64) * 2 - 1, rtol=1e-9)


def test_lrnn_shared_components():
    torch.manual_seed(0)
    net = models.build("lrnn-siren", 2, 1, rank=5, depth=2, shared=True, dtype=D64)
    assert_jet_matches(net, torch.rand(30, 2, dtype=D64) * 2 - 1)


@pytest.mark.parametrize("name,hyper", [("mlp-tanh", {"hidden": 10, "hidden_layers": 2}),
                                        ("siren", {"hidden": 12, "hidden_layers": 2, "w0_first": 3.0}),
                                        ("lrnn-siren", {"rank": 5, "depth": 2, "band": "projection", "w0": 2.0})])
def test_forward_laplacian_matches_finite_differences(name, hyper):
    torch.manual_seed(0)
    net = models.build(name, 2, 1, dtype=D64, **hyper)
    x = torch.rand(30, 2, dtype=D64) * 1.6 - 0.8
    h = 1e-4
    with torch.no_grad():
        u0 = net(x)
        fd = sum((net(x + h * e) - 2 * u0 + net(x - h * e)) / h ** 2 for e in torch.eye(2, dtype=D64))
    got = F.jet(net, x).l
    scale = float(fd.abs().max())
    assert scale > 1e-3
    assert (got - fd).abs().max() < 1e-4 * max(1.0, scale)


# -- sympy: hand-set networks written out symbolically ------------------------------------------------

X, Y = sp.symbols("x y")


def _sym_lap(expr, pts):
    lap = sp.diff(expr, X, 2) + sp.diff(expr, Y, 2)
    f = sp.lambdify((X, Y), lap, "math")
    return torch.tensor([[float(f(float(a), float(b)))] for a, b in pts], dtype=D64)


def test_sympy_tanh_network():
    W1 = [[0.5, -1.25], [2.0, 0.75], [-0.5, 1.5]]
    b1, W2, b2 = [0.1, -0.3, 0.2], [[1.5, -0.75, 2.0]], [0.25]
    net = models.build("mlp-tanh", 2, 1, hidden=3, hidden_layers=0, dtype=D64)
    with torch.no_grad():
        net.body[0].weight.copy_(torch.tensor(W1, dtype=D64))
        net.body[0].bias.copy_(torch.tensor(b1, dtype=D64))
        net.head.weight.copy_(torch.tensor(W2, dtype=D64))
        net.head.bias.copy_(torch.tensor(b2, dtype=D64))
    expr = b2[0] + sum(W2[0][k] * sp.tanh(W1[k][0] * X + W1[k][1] * Y + b1[k]) for k in range(3))
    pts = torch.rand(10, 2, dtype=D64) * 2 - 1
    assert torch.allclose(F.jet(net, pts).l, _sym_lap(expr, pts), rtol=1e-11, atol=1e-11)


@pytest.mark.parametrize("layernorm", [False, True])
def test_sympy_lrnn_product(layernorm):
    """One LRNN layer (rank 3, dbar 2, MLP components of width 2, sin) written out: the product rule."""
    torch.manual_seed(3)
    layer = LRNNLayer(2, 3, dbar=2, width=2, w0=1.5, is_first=True, layernorm=layernorm, component="mlp",
                      dtype=D64)
    head = nn.Linear(3, 1, dtype=D64)
    net = INR(nn.Sequential(layer), head, {"name": "test"})
    P, p = layer.proj.weight.tolist(), layer.proj.bias.tolist()
    a, b, c, c0 = layer.a.tolist(), layer.b.tolist(), layer.c.tolist(), layer.c0.tolist()
    w0, gamma = layer.comp_w0, layer.gamma
    phis = []
    for l in range(3):
        phi = 1
        for j in range(2):
            row = l * 2 + j                          # z read as r rows of dbar entries
            z = P[row][0] * X + P[row][1] * Y + p[row]
            g = c0[l][j] + sum(c[l][j][k] * sp.sin(w0 * (a[l][j][k] * z + b[l][j][k])) for k in range(2))
            phi = phi * (1 + gamma * g)
        phis.append(phi)
    if layernorm:
        mu = sum(phis) / 3
        var = sum((q - mu) ** 2 for q in phis) / 3
        wn, bn = layer.norm.weight.tolist(), layer.norm.bias.tolist()
        phis = [(q - mu) / sp.sqrt(var + layer.norm.eps) * wn[i] + bn[i] for i, q in enumerate(phis)]
    hw, hb = head.weight.tolist()[0], head.bias.tolist()[0]
    expr = hb + sum(hw[i] * phis[i] for i in range(3))
    pts = torch.rand(6, 2, dtype=D64) * 2 - 1
    want = _sym_lap(expr, pts)
    assert torch.allclose(F.jet(net, pts).l, want, rtol=1e-9, atol=1e-9 * float(want.abs().max()))


# -- hash grid: against a twice-differentiable plain-torch interpolation ------------------------------

def _hash_reference(enc: HashGridEncoding, x: torch.Tensor) -> torch.Tensor:
    """The encoding with local coordinates w = p - c as a differentiable function of x (cell fixed)."""
    c, _ = enc.positions(x.detach())
    idx, _ = enc.corners(c, torch.zeros_like(c, dtype=x.dtype))
    p = (x.t()[:, None, :] + 1) * (0.5 * enc.scale.to(x.dtype)[None, :, None])
    w = p - c.to(x.dtype)
    cols = []
    for bits in enc.corner_bits():
        f = 1.0
        for i, bit in enumerate(bits):
            f = f * (w[i] if bit else 1 - w[i])
        cols.append(f)
    wts = torch.stack(cols, -1)                                          # (L, B, C)
    vals = enc.embeddings[idx]                                           # (L, B, C, F)
    L, B = idx.shape[:2]
    return (vals * wts.unsqueeze(-1)).sum(2).transpose(0, 1).reshape(B, -1)


def _with_reference_encoding(net):
    enc = net.body[0]
    ref = INR(nn.Sequential(_Ref(enc), *list(net.body)[1:]), net.head, {"name": "test"})
    return ref


class _Ref(nn.Module):
    def __init__(self, enc):
        super().__init__()
        self.enc = enc

    def forward(self, x):
        return _hash_reference(self.enc, x)


@pytest.mark.parametrize("dim", [1, 2])
def test_hash_models(dim):
    torch.manual_seed(0)
    opts = dict(levels=3, table=40, base_resolution=2, finest_resolution=9)
    for net in (models.build("hash", dim, 1, table=40, levels=3, base_resolution=2, finest_resolution=9,
                             hidden=8, dtype=D64),
                models.build("siren", dim, 1, hidden=8, hidden_layers=1, encoding="hash", encoding_options=opts,
                             dtype=D64)):
        with torch.no_grad():
            net.body[0].embeddings.uniform_(-1, 1)
        assert F.unsupported(net) == []
        x = torch.rand(40, dim, dtype=D64) * 2 - 1
        with pytest.raises(RuntimeError, match="second derivatives"):
            reverse(net, x)                          # why the hash grid needs the forward rule
        with torch.no_grad():   # the reference reproduces the encoding ...
            assert torch.allclose(_with_reference_encoding(net)(x), net(x), rtol=1e-12, atol=1e-12)
        j, ref = F.jet(net, x), reverse(_with_reference_encoding(net), x)   # ... and the forward rule matches it
        assert torch.allclose(j.l, ref[2], rtol=1e-10, atol=1e-10 * (1 + float(ref[2].abs().max())))
        assert torch.allclose(j.g[..., 0], ref[1], rtol=1e-10, atol=1e-12)


def test_hash_mixed_second_derivatives_with_skewed_inputs():
    """A non-orthogonal input map makes the cell-constant mixed derivatives of the bilinear map count."""
    torch.manual_seed(0)
    enc = HashGridEncoding(2, levels=2, table=64, base_resolution=3, finest_resolution=5, features=2, dtype=D64)
    with torch.no_grad():
        enc.embeddings.uniform_(-1, 1)
    A = torch.tensor([[0.6, 0.3], [0.2, -0.5]], dtype=D64)
    x = torch.rand(30, 2, dtype=D64) * 2 - 1
    j = F._hash(enc, F.linear(F.identity(x), A))
    xr = x.clone().requires_grad_(True)
    y = _hash_reference(enc, xr @ A.t())
    want = []
    for f in range(y.shape[1]):
        want.append(laplacian(y[:, f:f + 1], xr).detach())
    want = torch.cat(want, 1)
    assert want.abs().max() > 1e-3
    assert torch.allclose(j.l, want, rtol=1e-10, atol=1e-10)


# -- the ansatz, the residual and training -------------------------------------------------------------

@pytest.mark.parametrize("boundary", ["exact", "penalty"])
@pytest.mark.parametrize("prob", ["poisson2d", "multiscale1d", "harmonic"])
def test_ansatz_rule(prob, boundary):
    p = HarmonicProblem() if prob == "harmonic" else problems.get(prob, 3 if prob == "poisson2d" else 1)
    torch.manual_seed(0)
    net = models.build("lrnn-siren", p.dim, 1, rank=6, **models.pde_defaults("lrnn-siren", 3, p.dim), dtype=D64)
    u = Ansatz(net, p, boundary)
    x = torch.rand(60, p.dim, dtype=D64)
    assert_jet_matches(u, x)
    rf, rr = residual(u, p, x, laplacian="forward"), residual(u, p, x, laplacian="reverse")
    assert torch.allclose(rf, rr, rtol=1e-10, atol=1e-10 * float(rr.detach().abs().max()))
    assert not residual(u, p, x, create_graph=False, laplacian="forward").requires_grad


def test_ansatz_chain_rule_factors():
    """u = net(2x - 1): gradient 2 net'(t), Laplacian 4 net''(t) (1-D, penalty mode: no bubble)."""
    p = problems.get("multiscale1d")
    net = models.build("mlp-tanh", 1, 1, hidden=6, hidden_layers=1, dtype=D64)
    x = torch.rand(20, 1, dtype=D64)
    t = 2 * x - 1
    jn, ja = F.jet(net, t), F.jet(Ansatz(net, p, "penalty"), x)
    assert torch.allclose(ja.g, 2 * jn.g) and torch.allclose(ja.l, 4 * jn.l)


def _plain_layer_norm(x, normalized_shape, weight=None, bias=None, eps=1e-5):
    """LayerNorm as plain ops: its reverse-mode third derivatives are right (torch's fused layer_norm's are not,
    see test_native_layer_norm_third_derivative)."""
    c = x - x.mean(-1, keepdim=True)
    y = c / torch.sqrt(c.square().mean(-1, keepdim=True) + eps)
    if weight is not None:
        y = y * weight
    return y + bias if bias is not None else y


def _loss_grads(u, p, x, mode):
    u.zero_grad(set_to_none=True)
    loss = residual(u, p, x, laplacian=mode).square().mean()
    loss.backward()
    return float(loss.detach()), [q.grad.clone() for q in u.parameters()]


@pytest.mark.parametrize("name", ["siren", "spder", "lrnn-siren", "lrnn-spder", "mlp-tanh", "gauss", "relu-pe"])
def test_training_gradient_matches_reverse(name, monkeypatch):
    """The gradient of the residual loss through the forward Laplacian equals reverse mode's (with LayerNorm
    written as plain ops on the reverse side)."""
    p = problems.get("poisson2d", 2)
    torch.manual_seed(0)
    net = models.build(name, 2, 1, params=1500, dtype=D64, **models.pde_defaults(name, 2, 2))
    u = Ansatz(net, p, "exact")
    x = torch.rand(64, 2, dtype=D64)
    lf, gf = _loss_grads(u, p, x, "forward")
    monkeypatch.setattr(torch.nn.functional, "layer_norm", _plain_layer_norm)
    lr, gr = _loss_grads(u, p, x, "reverse")
    assert abs(lf - lr) <= 1e-10 * lr
    for a, b in zip(gf, gr):
        assert torch.allclose(a, b, rtol=1e-9, atol=1e-10 * (1 + float(b.abs().max())))


def test_training_gradient_matches_finite_differences():
    """Independent of autograd's higher derivatives: central differences of the loss in a few parameters
    of an LRNN (LayerNorm included)."""
    p = problems.get("poisson2d", 2)
    torch.manual_seed(0)
    net = models.build("lrnn-siren", 2, 1, rank=5, dtype=D64, **models.pde_defaults("lrnn-siren", 2, 2))
    u = Ansatz(net, p, "exact")
    x = torch.rand(32, 2, dtype=D64)
    _, grads = _loss_grads(u, p, x, "forward")
    h = 1e-6
    for q, g in zip(u.parameters(), grads):
        for k in (0, q.numel() - 1):
            with torch.no_grad():
                q.view(-1)[k] += h
                lp = residual(u, p, x, create_graph=False, laplacian="forward").square().mean()
                q.view(-1)[k] -= 2 * h
                lm = residual(u, p, x, create_graph=False, laplacian="forward").square().mean()
                q.view(-1)[k] += h
            fd = float((lp - lm) / (2 * h))
            assert abs(float(g.view(-1)[k]) - fd) < 1e-6 * (1 + abs(fd))


def test_native_layer_norm_third_derivative():
    """Records why LRNN models train through the forward Laplacian: with this torch, the parameter gradient of a
    reverse-mode Laplacian through nn.LayerNorm disagrees with finite differences, while the same LayerNorm as
    plain ops (and the forward rule) agree.  If torch fixes it this test says so (then drop the note in
    docs/methods.md section 5)."""
    torch.manual_seed(0)
    lin, head, ln = nn.Linear(2, 6, dtype=D64), nn.Linear(6, 1, dtype=D64), nn.LayerNorm(6, dtype=D64)
    x = torch.rand(20, 2, dtype=D64)

    def loss(norm):
        xr = x.clone().requires_grad_(True)
        with torch.enable_grad():
            return laplacian(head(norm(torch.tanh(lin(xr)))), xr).square().mean()

    def grad_and_fd(norm):
        lin.zero_grad()
        loss(norm).backward()
        q, h = lin.weight, 1e-6
        with torch.no_grad():
            q.view(-1)[0] += h
            lp = loss(norm).detach()
            q.view(-1)[0] -= 2 * h
            lm = loss(norm).detach()
            q.view(-1)[0] += h
        return float(q.grad.view(-1)[0]), float((lp - lm) / (2 * h))

    plain = lambda h: _plain_layer_norm(h, (6,), ln.weight, ln.bias, ln.eps)
    g, fd = grad_and_fd(plain)
    assert abs(g - fd) < 1e-6
    g, fd = grad_and_fd(ln)
    if abs(g - fd) < 1e-6:
        pytest.xfail("torch's LayerNorm third derivative is now right: reverse mode trains LRNN correctly")
    net = INR(nn.Sequential(lin, nn.Tanh(), ln), head, {"name": "test"})
    xr = x.clone().requires_grad_(True)
    lin.zero_grad()
    F.jet(net, xr.detach()).l.square().mean().backward()
    assert abs(float(lin.weight.grad.view(-1)[0]) - fd) < 1e-6


def test_choose_laplacian_and_fallback():
    p = problems.get("poisson2d", 1)
    u = Ansatz(models.build("siren", 2, 1, hidden=6, hidden_layers=1), p)
    assert choose_laplacian(u) == "forward" and choose_laplacian(u, "reverse") == "reverse"
    assert choose_laplacian(Ansatz(models.build("hash", 2, 1, params=3000), p)) == "forward"
    # no rules: a plain Sequential, a complex-valued WIRE model, a plain function -> reverse (auto), error (forward)
    for other in (Ansatz(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)), p),
                  Ansatz(inr_build("wire", 2, 1, hidden=4, hidden_layers=1), p), p.exact):
        assert choose_laplacian(other) == "reverse"
        with pytest.raises(ValueError, match="no forward rule"):
            choose_laplacian(other, "forward")
    seq = Ansatz(nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1)).double(), p)
    x = torch.rand(10, 2, dtype=D64)
    assert torch.isfinite(residual(seq, p, x)).all()      # auto falls back to reverse mode
    with pytest.raises(ValueError, match="--laplacian"):
        choose_laplacian(u, "sideways")


def test_kan_falls_back_to_reverse(tmp_path, monkeypatch):
    pytest.importorskip("kan")
    monkeypatch.chdir(tmp_path)
    net = models.build("kan", 2, 1, params=600, grid=3, k=3)
    assert choose_laplacian(Ansatz(net, problems.get("poisson2d", 1))) == "reverse"


def test_solve_forward_and_reverse_agree():
    base = dict(problem="poisson2d", n=1, model="siren", params=400, steps=5, points=32, eval_res=8,
                residual_points=16, quiet=True, dtype="float64")
    f = solve(SolveConfig(**base, laplacian="forward"))
    r = solve(SolveConfig(**base, laplacian="reverse"))
    a = solve(SolveConfig(**base))
    assert f.metrics["laplacian"] == "forward" and r.metrics["laplacian"] == "reverse"
    assert a.metrics["laplacian"] == "forward"
    assert abs(f.metrics["rel_l2"] - r.metrics["rel_l2"]) < 1e-9
    assert abs(f.metrics["final_residual_rms"] - r.metrics["final_residual_rms"]) < 1e-9
    with pytest.raises(ValueError, match="--laplacian"):
        SolveConfig(**base, laplacian="x").validate()


def test_cli_laplacian_option(capsys, tmp_path):
    assert main(["solve", "--laplacian", "sideways"]) == 2
    assert "--laplacian" in capsys.readouterr().err
    assert main(["solve", "--model", "siren", "--params", "300", "--steps", "2", "--points", "16", "--lbfgs-steps", "0",
                 "--eval-res", "4", "--laplacian", "reverse", "--threads", "1", "--quiet", "--out", str(tmp_path / "r")]) == 0
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["steps"] == 2


def test_benchmark_quick(tmp_path):
    out = tmp_path / "lc"
    env = {**os.environ, "PYTHONPATH": ROOT}
    res = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "laplacian_cost.py"), "--quick",
                          "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert res.returncode == 0, res.stderr
    assert "reverse / forward" in res.stdout
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert {r["model"] for r in rows} == {"siren", "lrnn-siren", "hash"}
    assert (out / "table.md").is_file()
    again = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "laplacian_cost.py"), "--quick",
                            "--out", str(out)], capture_output=True, text=True, env=env, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr
