"""The LRNN speed paths: the torch.compile'd kernel pair and bf16 hidden projections, checked against
the plain autograd graph (the reference the paper's formulas define)."""
import shutil

import pytest
import torch

from inr.layers.lrnn import CompiledProductFn, LRNNLayer, product_reference
from inr.models import build

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("gcc") is None,
                                    reason="torch.compile on the CPU needs a C++ compiler")


# the poster's configuration, which these kernel tests were written against (the registry default is harmonic)
PAPER = dict(component="mlp", width=4, band="component", head_init="default")


def _rel(x, y):
    return float((x - y).detach().norm() / y.detach().norm().clamp_min(1e-30))


@needs_compiler
@pytest.mark.parametrize("activation,shared", [("sin", False), ("spder", True)])
def test_compiled_kernel_matches_plain_autograd_float32(activation, shared):
    """The compiled pair against the plain graph in float32: phi and its vector-Jacobian products
    to 1e-5 relative."""
    torch.manual_seed(0)
    L = LRNNLayer(3, 12, dbar=3, width=4, activation=activation, shared=shared)
    z = torch.randn(777, 12, 3, requires_grad=True)
    args = (z, L.a, L.b, L.c, L.c0)
    phi = CompiledProductFn.apply(*args, L.w0, activation, L.gamma)
    ref = product_reference(*args, L.w0, activation, L.gamma)
    assert _rel(phi, ref) < 1e-5
    w = torch.randn_like(ref)
    for g, r in zip(torch.autograd.grad(phi, args, w), torch.autograd.grad(ref, args, w)):
        assert _rel(g, r) < 1e-5


@needs_compiler
def test_compiled_model_step_is_as_accurate_as_plain_float32():
    """A whole two-layer model step.  Its parameter gradients pass through LayerNorm and a batch
    sum with cancellation, where float32 itself is only good to ~5e-3 (plain autograd in float32
    against float64); the compiled path must be no less accurate than the plain one."""
    torch.manual_seed(0)
    kw = dict(rank=12, dbar=3, width=4, activation="spder")

    def model(kernel, dtype):
        return torch.nn.Sequential(LRNNLayer(2, is_first=True, kernel=kernel, dtype=dtype, **kw),
                                   LRNNLayer(12, kernel=kernel, dtype=dtype, **kw))
    ref = model("plain", torch.float64)
    x = torch.rand(777, 2, dtype=torch.float64) * 2 - 1
    ref(x).square().mean().backward()
    err = {}
    for kernel in ("plain", "compiled"):
        m = model(kernel, torch.float32)
        m.load_state_dict({k: v.float() for k, v in ref.state_dict().items()})
        y = m(x.float())
        assert _rel(y.double(), ref(x)) < 1e-5
        y.square().mean().backward()
        err[kernel] = max(_rel(p.grad.double(), q.grad) for p, q in zip(m.parameters(), ref.parameters()))
    assert err["compiled"] <= 2 * err["plain"] + 1e-6


@needs_compiler
def test_compiled_kernel_saves_only_z_and_keeps_double_backward():
    torch.manual_seed(1)
    L = LRNNLayer(2, 16, dbar=4, width=8, kernel="compiled")
    x = torch.rand(512, 2, requires_grad=True)
    seen = {}

    def pack(t):
        seen[t.untyped_storage().data_ptr()] = t.numel()
        return t
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        L.product(x).sum()
    # z (512 x 16 x 4) is the largest saved tensor; the 512 x 16 x 4 x 8 activations are not kept
    assert max(seen.values()) <= 512 * 16 * 4
    # second derivatives (PDE residuals) go through the plain graph
    P = LRNNLayer(2, 16, dbar=4, width=8, memory_efficient=False)
    P.load_state_dict(L.state_dict())
    w = torch.randn(16)      # (a plain sum of LayerNorm outputs would be constant)
    g1 = torch.autograd.grad(L(x) @ w, x, torch.ones(512), create_graph=True)[0]
    h1 = torch.autograd.grad(g1.square().sum(), x)[0]
    g2 = torch.autograd.grad(P(x) @ w, x, torch.ones(512), create_graph=True)[0]
    h2 = torch.autograd.grad(g2.square().sum(), x)[0]
    assert _rel(h1, h2) < 1e-5


@needs_compiler
def test_compiled_function_gradcheck_float64():
    torch.manual_seed(2)
    L = LRNNLayer(3, 2, dbar=3, width=2, w0=3.0, activation="spder", dtype=torch.float64)
    z = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    f = lambda z, a, b, c, c0: CompiledProductFn.apply(z, a, b, c, c0, L.w0, "spder", L.gamma)
    assert torch.autograd.gradcheck(f, (z, L.a, L.b, L.c, L.c0))


def test_bf16_projection_only_on_hidden_layers():
    torch.manual_seed(3)
    net = build("lrnn-spder", 2, 1, rank=32, depth=3)
    low = build("lrnn-spder", 2, 1, rank=32, depth=3, precision="bf16")
    low.load_state_dict(net.state_dict())
    first, hidden = low.body[0], low.body[1]
    assert not first.low_precision and hidden.low_precision
    x = torch.rand(2000, 2) * 2 - 1
    h = torch.randn(10, 32)
    # the first layer (raw coordinates times w0) is untouched; a hidden projection is bf16-rounded
    assert torch.equal(first(x), net.body[0](x))
    zl, zf = hidden.project(h), net.body[1].project(h)
    assert zl.dtype == torch.float32 and 0 < _rel(zl, zf) < 1e-2
    # the model output stays close to float32, and the gradients flow to float32 parameters
    y, y32 = low(x), net(x)
    assert _rel(y, y32) < 5e-2
    y.square().mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all()
               for p in low.parameters())


def test_bf16_hidden_projection_still_fits():
    """A short fit with bf16 hidden projections reaches the same loss as float32 (within 10%)."""
    torch.manual_seed(4)
    x = torch.rand(1024, 2) * 2 - 1
    y = (torch.sin(3 * x[:, :1]) * torch.cos(2 * x[:, 1:])).contiguous()
    losses = {}
    for prec in ("fp32", "bf16"):
        torch.manual_seed(5)
        net = build("lrnn-siren", 2, 1, rank=24, depth=2, w0=10.0, precision=prec, **PAPER)
        opt = torch.optim.Adam(net.parameters(), 3e-3)
        for _ in range(150):
            loss = torch.mean((net(x) - y) ** 2)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            losses[prec] = float(torch.mean((net(x) - y) ** 2))
    assert losses["fp32"] < 1e-3
    assert losses["bf16"] < 1.1 * losses["fp32"] + 1e-5


def test_kernel_and_precision_are_checked():
    with pytest.raises(ValueError, match="kernel"):
        LRNNLayer(2, 4, kernel="triton")
    with pytest.raises(ValueError, match="precision"):
        LRNNLayer(2, 4, precision="fp16")
    assert LRNNLayer(2, 4, memory_efficient=False, kernel="compiled").kernel == "plain"
