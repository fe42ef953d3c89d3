"""Harmonic LRNN components, the projection band and the small read-out head, checked against an
explicit formula (cos(k theta) evaluated directly, not by the recurrence the kernels use), finite
differences (gradcheck) and the plain autograd graph."""
import math
import shutil

import numpy as np
import pytest
import torch

from inr.layers.lrnn import (CompiledHarmonicFn, HarmonicProductFn, LRNNLayer, harmonic_product_reference)
from inr.models import build, count_params

needs_compiler = pytest.mark.skipif(shutil.which("c++") is None and shutil.which("gcc") is None,
                                    reason="torch.compile on the CPU needs a C++ compiler")


def _explicit(layer, h):
    """phi_l = prod_j (1 + gamma g_lj(z_lj)) with loops and numpy, straight from the definition."""
    z = layer.project(torch.as_tensor(h)).detach().numpy().reshape(len(h), layer.rank, layer.dbar)
    om, ph, al, be, c0 = (p.detach().numpy() for p in (layer.omega, layer.phase, layer.alpha, layer.beta, layer.c0))
    out = np.ones((len(h), layer.rank))
    for n in range(len(h)):
        for l in range(layer.rank):
            R = 0 if layer.shared else l
            for j in range(layer.dbar):
                th = om[R, j] * z[n, l, j] + ph[R, j]
                s = sum(al[R, j, k] * math.cos((k + 1) * th) + be[R, j, k] * math.sin((k + 1) * th)
                        for k in range(layer.harmonics))
                env = {"sin": 1.0, "spder": math.sqrt(max(abs(th), 1e-4)), "spder-atan": math.atan(th)}[layer.activation]
                out[n, l] *= 1.0 + layer.gamma * (env * s + c0[R, j])
    return out


@pytest.mark.parametrize("activation", ["sin", "spder", "spder-atan"])
@pytest.mark.parametrize("shared", [False, True])
def test_harmonic_layer_matches_explicit_formula(activation, shared):
    torch.manual_seed(1)
    L = LRNNLayer(3, 4, dbar=3, component="harmonic", harmonics=3, activation=activation, shared=shared,
                  layernorm=False, dtype=torch.float64)
    h = torch.randn(6, 3, dtype=torch.float64)
    np.testing.assert_allclose(L(h).detach().numpy(), _explicit(L, h), rtol=1e-10)


@pytest.mark.parametrize("activation", ["sin", "spder", "spder-atan"])
@pytest.mark.parametrize("shared", [False, True])
@pytest.mark.parametrize("save_trig", [True, False])
def test_harmonic_fused_gradients(activation, shared, save_trig, monkeypatch):
    import inr.layers.lrnn as lr
    monkeypatch.setattr(lr, "SAVE_TRIG_ELEMENTS", 1 << 30 if save_trig else 0)
    torch.manual_seed(2)
    L = LRNNLayer(3, 2, dbar=3, component="harmonic", harmonics=3, activation=activation, shared=shared,
                  dtype=torch.float64)
    z = torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True)
    f = lambda *a: HarmonicProductFn.apply(*a, activation, L.gamma)[0]
    args = (z, L.omega, L.phase, L.alpha, L.beta, L.c0)
    assert torch.autograd.gradcheck(f, args)
    assert torch.autograd.gradgradcheck(f, args)
    ref = harmonic_product_reference(*args, activation, L.gamma)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(f(*args), args, g), torch.autograd.grad(ref, args, g)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)


@needs_compiler
@pytest.mark.parametrize("shared", [False, True])
def test_compiled_harmonic_matches_reference(shared):
    """The compiled pair (float32) against the float64 plain graph: values and gradients to 1e-4."""
    torch.manual_seed(3)
    L = LRNNLayer(3, 8, dbar=2, component="harmonic", harmonics=2, activation="spder", shared=shared)
    z = torch.randn(300, 8, 2, requires_grad=True)
    args = (z, L.omega, L.phase, L.alpha, L.beta, L.c0)
    phi = CompiledHarmonicFn.apply(*args, "spder", L.gamma)
    args64 = [a.detach().double().requires_grad_() for a in args]
    ref = harmonic_product_reference(*args64, "spder", L.gamma)
    g = torch.randn_like(ref)
    assert float((phi.double() - ref).norm() / ref.norm()) < 1e-5
    for a, b in zip(torch.autograd.grad(phi, args, g.float()), torch.autograd.grad(ref, args64, g)):
        assert float((a.double() - b).norm() / b.norm()) < 1e-4


@pytest.mark.parametrize("activation", ["sin", "spder"])
def test_harmonic_variance_bound_independent_of_dbar(activation):
    """Lemma 1 for harmonic components: zero-mean, variance component_std^2, Var[phi] <= exp(s^2) - 1."""
    torch.manual_seed(4)
    h = torch.randn(4000, 48, dtype=torch.float64)
    for dbar in (2, 8, 32):
        L = LRNNLayer(48, 48, dbar=dbar, component="harmonic", harmonics=3, activation=activation,
                      layernorm=False, dtype=torch.float64)
        with torch.no_grad():
            z = L.proj(h).unflatten(-1, (48, dbar))
            g, phi = L.components(z), L.product(h)
        assert g.mean(0).abs().mean() < 0.05
        s2 = g.var(0).mean().item()
        assert abs(s2 - 1.0) < 0.1
        assert phi.var(0).mean().item() <= 1.05 * (math.exp(s2) - 1)


def test_projection_band_is_siren_first_layer():
    """band='projection': z = w0 (P x + p) with P ~ U(-1/n, 1/n); unit-frequency components."""
    torch.manual_seed(5)
    L = LRNNLayer(2, 64, dbar=2, w0=30.0, is_first=True, band="projection", component="harmonic",
                  dtype=torch.float64)
    assert L.proj.weight.abs().max() <= 0.5 and L.proj.weight.abs().max() > 0.45
    assert torch.all(L.omega == 1.0)
    x = torch.rand(10, 2, dtype=torch.float64) * 2 - 1
    assert torch.allclose(L.project(x), 30.0 * (x @ L.proj.weight.T + L.proj.bias))
    M = LRNNLayer(2, 8, dbar=2, width=3, w0=30.0, is_first=True, band="projection", dtype=torch.float64)
    assert M.comp_w0 == 1.0 and torch.all(M.a == torch.tensor([1.0, 2.0, 3.0], dtype=torch.float64))
    # the band grows with w0, the step multiplier does not (audio: w0 = 3000)
    A = LRNNLayer(1, 64, dbar=2, w0=3000.0, is_first=True, band="projection", component="harmonic",
                  dtype=torch.float64)
    assert A.scale == 30.0 and 90 < A.proj.weight.abs().max() <= 100
    # hidden layers ignore the band option
    H = LRNNLayer(8, 8, band="projection", dtype=torch.float64)
    assert H.scale == 1.0 and H.comp_w0 == 30.0


def test_harmonic_count_and_small_head():
    L = LRNNLayer(5, 7, dbar=3, component="harmonic", harmonics=4)
    assert sum(p.numel() for p in L.parameters()) == LRNNLayer.count(5, 7, 3, 1, component="harmonic", harmonics=4)
    m = build("lrnn-spder", 2, 1, rank=64, component="harmonic", head_init="small")
    assert m.head.weight.abs().max() <= math.sqrt(6 / 64) / 30 and torch.all(m.head.bias == 0)
    # a budget is honoured with harmonic components too
    m = build("lrnn-spder", 2, 1, params=50_000, component="harmonic", depth=3)
    assert abs(count_params(m) - 50_000) / 50_000 < 0.02


def test_fit_defaults_pick_the_auto_kernel(monkeypatch):
    from inr.layers import lrnn as lr
    from inr.models import build, spec
    for task in ("image", "audio", "ct"):   # no task overrides the family default, 'auto'
        assert "kernel" not in spec("lrnn-spder").defaults(task)
    assert build("lrnn-spder", 2, 1, rank=4).body[0].kernel == "auto"
    z, alpha = torch.zeros(2, 3, 2), torch.zeros(3, 2, 4)
    # auto: MLP components on the CPU use the fused kernel; harmonic ones the C++ kernel where it builds
    assert lr.resolve_kernel("auto", "mlp", z) == "fused"
    monkeypatch.setattr(lr.lrnn_cpp, "available", lambda: True)
    assert lr.resolve_kernel("auto", "harmonic", z, alpha, "spder") == "cpp"
    assert lr.resolve_kernel("auto", "harmonic", z.double(), alpha, "spder") == "cpp"
    # ... and fall back to the eager kernel without a compiler, in bfloat16 or for K > 8
    assert lr.resolve_kernel("cpp", "harmonic", z.bfloat16(), alpha, "spder") == "fused"
    assert lr.resolve_kernel("cpp", "harmonic", z, torch.zeros(3, 2, 9), "spder") == "fused"
    assert lr.resolve_kernel("cpp", "mlp", z) == "fused"
    monkeypatch.setattr(lr.lrnn_cpp, "available", lambda: False)
    assert lr.resolve_kernel("auto", "harmonic", z, alpha, "spder") == "fused"
    assert lr.resolve_kernel("compiled", "harmonic", z, alpha, "spder") == "compiled"


@pytest.mark.parametrize("activation", ["sin", "spder"])
def test_width_one_mlp_component(activation):
    """The width-1 MLP component (g = c sigma(w0 (a t + b)) + c0), a registry option: the fused kernel
    against plain autograd and finite differences, float64."""
    from inr.layers.lrnn import ProductFn, product_reference

    torch.manual_seed(6)
    L = LRNNLayer(3, 4, dbar=2, width=1, w0=3.0, activation=activation, dtype=torch.float64)
    z = torch.randn(5, 4, 2, dtype=torch.float64, requires_grad=True)
    args = (z, L.a, L.b, L.c, L.c0)
    f = lambda *a: ProductFn.apply(*a, L.w0, activation, L.gamma)
    assert torch.autograd.gradcheck(f, args)
    ref = product_reference(*args, L.w0, activation, L.gamma)
    g = torch.randn_like(ref)
    for a, b in zip(torch.autograd.grad(f(*args), args, g), torch.autograd.grad(ref, args, g)):
        assert torch.allclose(a, b, rtol=1e-10, atol=1e-12)
    m = build("lrnn-spder", 2, 1, rank=8, component="mlp", width=1)
    assert all(layer.width == 1 and layer.a.shape[-1] == 1 for layer in m.body)
