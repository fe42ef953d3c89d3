"""The C++ CPU kernel for harmonic LRNN components (inr.layers.lrnn_cpp), checked against the formula written
out with numpy loops, the plain autograd graph in float64, finite differences (gradcheck), the eager fused
kernel, and second derivatives (reverse double backward; the forward Laplacian of pde.forward)."""
import math

import numpy as np
import pytest
import torch

from inr.layers import lrnn_cpp
from inr.layers.lrnn import HarmonicProductFn, LRNNLayer, harmonic_product_reference, lrnn_product
from inr.models import build

pytestmark = pytest.mark.skipif(not lrnn_cpp.available(), reason=f"C++ kernel not built: {lrnn_cpp.build_error()}")

ACTS = ["sin", "spder", "spder-atan"]


def _layer(activation, shared=False, K=4, dbar=2, rank=6, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return LRNNLayer(3, rank, dbar=dbar, component="harmonic", harmonics=K, activation=activation, shared=shared,
                     dtype=dtype, kernel="cpp")


def _params(L):
    return (L.omega, L.phase, L.alpha, L.beta, L.c0)


def _explicit(z, L):
    """phi from the definition: math.cos(k theta) for each k, loops over every element."""
    om, ph, al, be, c0 = (p.detach().numpy() for p in _params(L))
    zz = z.detach().numpy()
    B, r, dbar = zz.shape
    out = np.ones((B, r))
    for n in range(B):
        for l in range(r):
            R = 0 if L.shared else l
            for j in range(dbar):
                th = om[R, j] * zz[n, l, j] + ph[R, j]
                s = sum(al[R, j, k] * math.cos((k + 1) * th) + be[R, j, k] * math.sin((k + 1) * th)
                        for k in range(L.harmonics))
                env = {"sin": 1.0, "spder": math.sqrt(max(abs(th), 1e-4)), "spder-atan": math.atan(th)}[L.activation]
                out[n, l] *= 1.0 + L.gamma * (env * s + c0[R, j])
    return out


def _rel(a, b):
    return float((a.detach().double() - b.detach().double()).norm() / b.detach().double().norm().clamp_min(1e-300))


@pytest.mark.parametrize("activation", ACTS)
@pytest.mark.parametrize("shared,K,dbar", [(False, 4, 2), (True, 3, 3), (False, 6, 1)])
def test_cpp_matches_formula_and_plain_gradients_float64(activation, shared, K, dbar):
    L = _layer(activation, shared, K, dbar)
    z = (3 * torch.randn(9, 6, dbar, dtype=torch.float64)).requires_grad_()
    args = (z, *_params(L))
    phi = lrnn_cpp.harmonic_product_cpp(*args, activation, L.gamma)
    np.testing.assert_allclose(phi.detach().numpy(), _explicit(z, L), rtol=1e-12, atol=1e-13)
    ref = harmonic_product_reference(*args, activation, L.gamma)
    w = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(phi, args, w), torch.autograd.grad(ref, args, w)):
        assert a.shape == b.shape and torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    # the kernel's own double-backward reference is the same expression
    assert torch.allclose(lrnn_cpp.harmonic_product_plain(*args, activation, L.gamma), ref, rtol=1e-13)


@pytest.mark.parametrize("activation", ACTS)
def test_cpp_gradcheck_float64(activation):
    L = _layer(activation, K=3, dbar=2, rank=2)
    z = torch.randn(4, 2, 2, dtype=torch.float64, requires_grad=True)
    f = lambda *a: lrnn_cpp.harmonic_product_cpp(*a, activation, L.gamma)
    args = (z, *_params(L))
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)     # through the plain-graph fallback


def _float32_errors(L, z64, activation):
    """Relative errors of phi and its gradients in float32 (cpp and fused kernels) against the float64 graph
    evaluated at the same float32-rounded inputs."""
    args32 = [a.detach().float().requires_grad_() for a in (z64, *_params(L))]
    args64 = [a.detach().double().requires_grad_() for a in args32]
    ref = harmonic_product_reference(*args64, activation, L.gamma)
    w = torch.randn_like(ref)
    g_ref = torch.autograd.grad(ref, args64, w)
    errs = {}
    for name, fn in (("cpp", lambda *a: lrnn_cpp.harmonic_product_cpp(*a, activation, L.gamma)),
                     ("fused", lambda *a: HarmonicProductFn.apply(*a, activation, L.gamma)[0])):
        phi = fn(*args32)
        assert phi.dtype == torch.float32
        grads = torch.autograd.grad(phi, args32, w.float())
        errs[name] = [_rel(phi, ref)] + [_rel(a, b) for a, b in zip(grads, g_ref)]
    return errs


@pytest.mark.parametrize("activation", ACTS)
def test_cpp_float32_against_float64_and_fused(activation):
    """float32 (the kernel's own sin/cos/atan polynomials) against float64: to ~1e-6 at ordinary theta;
    over a wide range (theta ~ 0 at the sqrt floor up to |theta| > 65536, the libm rows), where float32's
    rounding of theta itself dominates, no worse than the eager fused kernel."""
    torch.manual_seed(5)
    L = _layer(activation, rank=40, K=4)
    errs = _float32_errors(L, 3 * torch.randn(333, 40, 2, dtype=torch.float64), activation)
    assert max(errs["cpp"]) < 2e-5
    z = torch.randn(333, 40, 2, dtype=torch.float64) * torch.logspace(-6, 4.5, 40, dtype=torch.float64)[:, None]
    z[0, 0, 0] = -L.phase[0, 0] / L.omega[0, 0]      # theta ~ 0
    z[1, :, 1] = 1e6 / L.omega[:, 1]                   # |theta| = 1e6: libm rows
    errs = _float32_errors(L, z, activation)
    assert all(c <= 2 * f + 1e-6 for c, f in zip(errs["cpp"], errs["fused"])), errs


def test_cpp_threads_and_layer_paths_agree(torch_one_thread):
    """One thread vs two (different row splits and partial sums), a whole model's step against the plain
    kernel, the stacked models of inr.batched and torch.func transforms (which use the plain graph)."""
    L = _layer("spder", rank=24, dtype=torch.float32)
    z = torch.randn(1000, 24, 2, requires_grad=True)
    args = (z, *_params(L))
    out = {}
    for nt in (1, 2):
        torch.set_num_threads(nt)
        phi = lrnn_cpp.harmonic_product_cpp(*args, "spder", L.gamma)
        out[nt] = (phi, *torch.autograd.grad(phi.square().sum(), args))
    torch.set_num_threads(1)
    for a, b in zip(out[1], out[2]):
        assert _rel(a, b) < 1e-6
    # a three-layer model (auto kernel = cpp on the CPU) against the plain graph, float64
    torch.manual_seed(1)
    net = build("lrnn-spder", 2, 1, rank=16, dtype=torch.float64)
    assert net.body[0].kernel == "auto"
    ref = build("lrnn-spder", 2, 1, rank=16, dtype=torch.float64, kernel="plain")
    ref.load_state_dict(net.state_dict())
    x = torch.rand(300, 2, dtype=torch.float64) * 2 - 1
    net(x).square().mean().backward()
    ref(x).square().mean().backward()
    for p, q in zip(net.parameters(), ref.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-9, atol=1e-12)
    # under torch.func.vmap the functional entry point takes the plain graph, with the same values
    zz = torch.randn(5, 3, 16, 2, dtype=torch.float64)
    params = tuple(p.detach() for p in _params(net.body[1]))
    v = torch.func.vmap(lambda t: lrnn_product(t, params, "harmonic", "cpp", "spder", net.body[1].gamma))(zz)
    c = torch.stack([lrnn_product(t, params, "harmonic", "cpp", "spder", net.body[1].gamma) for t in zz])
    assert torch.allclose(v, c, rtol=1e-12)


def test_cpp_second_derivatives_for_pde():
    """Reverse-over-reverse Laplacian (pde.operators.laplacian) of a cpp-kernel model and its training
    gradient equal the plain graph's; pde.forward's jet (forward Laplacian) agrees with both."""
    from pde.forward import jet
    from pde.operators import laplacian

    torch.manual_seed(2)
    net = build("lrnn-siren", 2, 1, rank=8, depth=2, w0=3.0, dtype=torch.float64, kernel="cpp")
    ref = build("lrnn-siren", 2, 1, rank=8, depth=2, w0=3.0, dtype=torch.float64, kernel="plain")
    ref.load_state_dict(net.state_dict())
    x = (torch.rand(64, 2, dtype=torch.float64) * 2 - 1).requires_grad_()
    lap = {}
    for name, m in (("cpp", net), ("plain", ref)):
        lap[name] = laplacian(m(x), x)
        lap[name].square().mean().backward()
    assert _rel(lap["cpp"], lap["plain"]) < 1e-10
    for p, q in zip(net.parameters(), ref.parameters()):   # (the head's bias has no effect on a Laplacian)
        assert (p.grad is None and q.grad is None) or torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-12)
    assert _rel(jet(net, x.detach()).l, lap["plain"]) < 1e-9


def test_no_compiler_falls_back_to_fused(monkeypatch):
    monkeypatch.setattr(lrnn_cpp, "_state", {})
    monkeypatch.setattr(lrnn_cpp, "_compiler", lambda: None)
    assert not lrnn_cpp.available() and "compiler" in lrnn_cpp.build_error()
    L = _layer("spder", K=4)
    P = LRNNLayer(3, 6, dbar=2, component="harmonic", harmonics=4, activation="spder", dtype=torch.float64,
                  kernel="plain")
    P.load_state_dict(L.state_dict())
    h = torch.randn(7, 3, dtype=torch.float64)
    assert torch.allclose(L(h), P(h), rtol=1e-12)
    monkeypatch.setattr(lrnn_cpp, "_state", {})
    monkeypatch.setenv("INR_CPP_KERNEL", "0")
    assert not lrnn_cpp.available()
