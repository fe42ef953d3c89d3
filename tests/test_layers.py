"""Layer core: formulas against numpy, the papers' initialisation statistics, gradients, LRNN bounds."""
import math

import numpy as np
import pytest
import torch

from inr.layers import (ComplexGaborLayer, GaussLayer, LRNNLayer, PositionalEncoding, RealGaborLayer, SineLayer,
                        spder_atan, spder_sqrt)
from inr.layers.lrnn import ProductFn, product_reference

torch.set_num_threads(2)


def test_siren_init_ranges_and_unit_preactivations():
    torch.manual_seed(0)
    first = SineLayer(2, 512, w0=30.0, is_first=True)
    assert first.linear.weight.abs().max() <= 1 / 2
    hidden = SineLayer(512, 512, w0=30.0)
    bound = math.sqrt(6 / 512) / 30
    w = hidden.linear.weight
    assert w.abs().max() <= bound
    assert abs(w.var().item() - bound**2 / 3) < 0.05 * bound**2 / 3  # uniform variance
    # SIREN's argument: inputs arcsine-distributed (sin of uniform phase) -> w0 W x ~ N(0, 1)
    x = torch.sin(torch.rand(4096, 512) * 2 * math.pi)
    z = 30.0 * (x @ w.T)
    assert abs(z.std().item() - 1.0) < 0.05


def test_activation_formulas_against_numpy():
    z = torch.linspace(-7, 7, 1001, dtype=torch.float64)
    zn = z.numpy()
    np.testing.assert_allclose(spder_sqrt(z).numpy(), np.sin(zn) * np.sqrt(np.maximum(np.abs(zn), 1e-4)), rtol=1e-12)
    np.testing.assert_allclose(spder_atan(z).numpy(), np.sin(zn) * np.arctan(zn), rtol=1e-12)
    g = GaussLayer(3, 4, scale=10.0, dtype=torch.float64)
    x = torch.randn(5, 3, dtype=torch.float64)
    lin = (x @ g.linear.weight.T + g.linear.bias).detach().numpy()
    np.testing.assert_allclose(g(x).detach().numpy(), np.exp(-(10 * lin) ** 2), rtol=1e-12)
    rg = RealGaborLayer(3, 4, w0=20.0, s0=10.0, dtype=torch.float64)
    lin = (x @ rg.linear.weight.T + rg.linear.bias).detach().numpy()
    np.testing.assert_allclose(rg(x).detach().numpy(), np.cos(20 * lin) * np.exp(-(10 * lin) ** 2), rtol=1e-12)
    cg = ComplexGaborLayer(3, 4, w0=20.0, s0=10.0, is_first=True, dtype=torch.float64)
    lin = (x @ cg.linear.weight.T + cg.linear.bias).detach().numpy()
    np.testing.assert_allclose(cg(x).detach().numpy(), np.exp(1j * 20 * lin - np.abs(10 * lin) ** 2), rtol=1e-12)
    cg2 = ComplexGaborLayer(4, 2, dtype=torch.float64)
    assert cg2.linear.weight.dtype == torch.complex128 and cg2(cg(x)).dtype == torch.complex128


def test_spder_gradient_finite_at_zero():
    z = torch.zeros(3, requires_grad=True)
    spder_sqrt(z).sum().backward()
    assert torch.isfinite(z.grad).all()


def test_positional_encoding_formula():
    pe = PositionalEncoding(2, n_freqs=4, dtype=torch.float64)
    x = torch.rand(7, 2, dtype=torch.float64) * 2 - 1
    xn = x.numpy()
    k = 2.0 ** np.arange(4) * np.pi
    expect = np.concatenate([xn, np.sin(xn[:, :, None] * k).reshape(7, -1), np.cos(xn[:, :, None] * k).reshape(7, -1)], 1)
    np.testing.assert_allclose(pe(x).numpy(), expect, rtol=1e-12)
    assert pe.out_features == 2 * (1 + 8)


@pytest.mark.parametrize("shared", [False, True])
def test_lrnn_param_count_formula(shared):
    layer = LRNNLayer(5, 7, dbar=3, width=4, shared=shared)
    assert sum(p.numel() for p in layer.parameters()) == LRNNLayer.count(5, 7, 3, 4, shared=shared)
    R = 1 if shared else 7
    assert LRNNLayer.count(5, 7, 3, 4, shared=shared) == 7 * 3 * 6 + R * 3 * 13 + 14


def _explicit_lrnn(layer, h):
    """The paper's formula written out with loops (independent of the layer's vectorised code)."""
    z = (h @ layer.proj.weight.T + layer.proj.bias).reshape(h.shape[0], layer.rank, layer.dbar)
    act = {"sin": np.sin, "spder": lambda u: np.sin(u) * np.sqrt(np.maximum(np.abs(u), 1e-4)),
           "spder-atan": lambda u: np.sin(u) * np.arctan(u)}[layer.activation]
    z, a, b, c, c0 = (t.detach().numpy() for t in (z, layer.a, layer.b, layer.c, layer.c0))
    phi = np.ones((h.shape[0], layer.rank))
    for l in range(layer.rank):
        i = 0 if layer.shared else l
        for j in range(layer.dbar):
            g = sum(c[i, j, k] * act(layer.w0 * (a[i, j, k] * z[:, l, j] + b[i, j, k])) for k in range(layer.width))
            phi[:, l] *= 1 + layer.dbar ** -0.5 * (g + c0[i, j])
    return phi


@pytest.mark.parametrize("activation", ["sin", "spder", "spder-atan"])
@pytest.mark.parametrize("shared", [False, True])
def test_lrnn_matches_explicit_formula(activation, shared):
    torch.manual_seed(1)
    layer = LRNNLayer(3, 4, dbar=3, width=2, w0=5.0, activation=activation, shared=shared, layernorm=False,
                      dtype=torch.float64)
    h = torch.randn(6, 3, dtype=torch.float64)
    np.testing.assert_allclose(layer(h).detach().numpy(), _explicit_lrnn(layer, h), rtol=1e-10)


@pytest.mark.parametrize("activation", ["sin", "spder", "spder-atan"])
@pytest.mark.parametrize("shared", [False, True])
def test_fused_product_gradients(activation, shared):
    torch.manual_seed(2)
    L = LRNNLayer(3, 2, dbar=3, width=2, w0=3.0, activation=activation, shared=shared, dtype=torch.float64)
    z = torch.randn(3, 2, 3, dtype=torch.float64, requires_grad=True)
    f = lambda z, a, b, c, c0: ProductFn.apply(z, a, b, c, c0, L.w0, activation, L.gamma)
    args = (z, L.a, L.b, L.c, L.c0)
    assert torch.autograd.gradcheck(f, args)          # against finite differences
    assert torch.autograd.gradgradcheck(f, args)      # second derivatives (PDE residuals)


def test_fused_equals_plain_autograd_on_a_model_step():
    torch.manual_seed(3)
    kw = dict(rank=16, dbar=4, width=3, activation="spder", dtype=torch.float64)
    fused = torch.nn.Sequential(LRNNLayer(2, is_first=True, **kw), LRNNLayer(16, **kw))
    plain = torch.nn.Sequential(LRNNLayer(2, is_first=True, memory_efficient=False, **kw),
                                LRNNLayer(16, memory_efficient=False, **kw))
    plain.load_state_dict(fused.state_dict())
    x = torch.rand(5000, 2, dtype=torch.float64) * 2 - 1  # more rows than one chunk
    for m in (fused, plain):
        m(x).square().mean().backward()
    assert torch.allclose(fused(x), plain(x), atol=1e-10)
    for p, q in zip(fused.parameters(), plain.parameters()):
        assert torch.allclose(p.grad, q.grad, rtol=1e-8, atol=1e-10)


def test_fused_path_saves_less_memory():
    kw = dict(rank=32, dbar=4, width=8)
    x = torch.rand(2048, 2)

    def saved_bytes(layer):
        seen = {}

        def pack(t):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
            return t
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            layer(x).sum()
        return sum(seen.values())
    fused, plain = LRNNLayer(2, memory_efficient=True, **kw), LRNNLayer(2, memory_efficient=False, **kw)
    # plain autograd keeps batch x r x dbar x m activations; the fused path batch x r x dbar
    assert saved_bytes(plain) > 4 * saved_bytes(fused)


def test_lrnn_under_torch_func():
    from torch.func import jvp, vmap
    L = LRNNLayer(2, 4, dbar=2, width=3, dtype=torch.float64)
    x = torch.randn(5, 2, dtype=torch.float64)
    assert torch.allclose(vmap(L)(x[:, None])[:, 0], L(x))
    eps = 1e-6
    v = torch.randn_like(x)
    _, tangent = jvp(L, (x,), (v,))
    fd = (L(x + eps * v) - L(x - eps * v)) / (2 * eps)
    assert torch.allclose(tangent, fd, atol=1e-6)


@pytest.mark.parametrize("activation", ["sin", "spder"])
def test_lrnn_variance_bound_independent_of_dbar(activation):
    """Lemma 1: zero-mean components of variance s^2 give Var[phi] <= exp(s^2) - 1, whatever dbar is."""
    torch.manual_seed(4)
    h = torch.randn(4000, 48, dtype=torch.float64)  # unit-variance features, as after LayerNorm
    for dbar in (2, 8, 32):
        L = LRNNLayer(48, 48, dbar=dbar, width=4, activation=activation, layernorm=False, dtype=torch.float64)
        with torch.no_grad():
            z = L.proj(h).unflatten(-1, (48, dbar))
            g, phi = L.components(z), L.product(h)
        assert g.mean(0).abs().mean() < 0.05                     # zero-mean components
        s2 = g.var(0).mean().item()
        assert abs(s2 - 1.0) < 0.1                               # the variance asked for (component_std=1)
        assert phi.var(0).mean().item() <= 1.05 * (math.exp(s2) - 1)
        # without gamma = dbar^-1/2 the same components would give (1 + s^2)^dbar - 1
        assert (1 + s2) ** dbar - 1 > math.exp(s2) - 1 or dbar == 1


def test_lrnn_rejects_bad_shapes():
    with pytest.raises(ValueError):
        LRNNLayer(2, 0)
    with pytest.raises(ValueError):
        LRNNLayer(2, 4, activation="relu")


def test_layers_move_with_to_and_have_repr():
    pe = PositionalEncoding(2, 3)
    assert "freqs" in dict(pe.named_buffers())
    assert pe.to(torch.float64).freqs.dtype == torch.float64
    for layer in (SineLayer(2, 3), GaussLayer(2, 3), RealGaborLayer(2, 3), ComplexGaborLayer(2, 3, is_first=True),
                  LRNNLayer(2, 3)):
        assert "in_features=2" in repr(layer)
