"""Hash-grid encoding (Instant-NGP) against a slow, direct float64 reference; the 'hash' model family."""
from __future__ import annotations

from conftest import fit_and_save
from inr.models import spec
import itertools
import json
import math

import numpy as np
import pytest
import torch

from inr.layers.hashgrid import HashGridEncoding, level_resolutions
from inr.models import build, count_params, from_config

pytestmark = pytest.mark.usefixtures("torch_one_thread")
PI = (1, 2654435761, 805459861)


# ----------------------------------------------------------------------------------------------
# The reference: python loops over levels and corners, the hash written out.


def ref_resolutions(L, base, finest):
    if L == 1:
        return [base]
    b = math.exp((math.log(finest) - math.log(base)) / (L - 1))
    return [int(math.floor(base * b ** l + 1e-6)) for l in range(L)]


def ref_index(v, N, T, d):
    """Index of vertex ``v`` (python ints) in a level of resolution N and table size T (before the offset)."""
    if (N + 1) ** d <= T:
        return sum(v[i] * (N + 1) ** i for i in range(d))
    h = 0
    for i in range(d):
        h ^= (v[i] * PI[i]) % 2 ** 32  # uint32 product
    return h % T


def ref_encode(x, table, d, L, F, T, base, finest):
    """(B, d) float64 inputs, (sum T_l, F) table -> (B, L F), differentiable by autograd in x and table."""
    res = ref_resolutions(L, base, finest)
    sizes = [min(T, (n + 1) ** d) for n in res]
    rows = []
    for b in range(x.shape[0]):
        feats, off = [], 0
        for l, N in enumerate(res):
            p = [(x[b, i] + 1) / 2 * N for i in range(d)]
            c = [min(max(int(math.floor(float(p[i].detach()))), 0), N - 1) for i in range(d)]
            w = [p[i] - c[i] for i in range(d)]
            f = torch.zeros(F, dtype=table.dtype)
            for o in itertools.product((0, 1), repeat=d):
                weight = 1.0
                for i in range(d):
                    weight = weight * (w[i] if o[i] else 1 - w[i])
                v = [c[i] + o[i] for i in range(d)]
                f = f + weight * table[off + ref_index(v, N, T, d)]
            feats.append(f)
            off += sizes[l]
        rows.append(torch.cat(feats))
    return torch.stack(rows)


# (d, levels, table, base, finest): each has dense and hashed levels; tables of 2^k and not
CASES = [(1, 4, 32, 4, 100), (1, 3, 50, 8, 64), (2, 4, 128, 3, 40), (2, 3, 100, 4, 20), (3, 3, 200, 2, 12),
         (3, 4, 512, 2, 16)]


def _enc(d, L, T, base, finest, F=2, dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    e = HashGridEncoding(d, levels=L, features=F, table=T, base_resolution=base, finest_resolution=finest,
                         dtype=dtype)
    with torch.no_grad():
        e.embeddings.normal_()  # larger than the 1e-4 init so that every entry matters
    return e


@pytest.mark.parametrize("d,L,T,base,finest", CASES)
def test_encoding_and_gradients_match_the_reference(d, L, T, base, finest):
    e = _enc(d, L, T, base, finest)
    assert 0 < e.n_dense < L  # both kinds of level are exercised
    torch.manual_seed(1)
    x = (torch.rand(9, d, dtype=torch.float64) * 2.2 - 1.1)  # a little outside [-1, 1] too
    x[0] = -1.0
    x[1] = 1.0
    xa, xb = x.clone().requires_grad_(), x.clone().requires_grad_()
    ta = e.embeddings
    tb = e.embeddings.detach().clone().requires_grad_()
    ya = e(xa)
    yb = ref_encode(xb, tb, d, L, 2, T, base, finest)
    torch.testing.assert_close(ya, yb, rtol=1e-12, atol=1e-12)
    g = torch.randn_like(ya)
    ya.backward(g)
    yb.backward(g)
    torch.testing.assert_close(ta.grad, tb.grad, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(xa.grad, xb.grad, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("d,L,T,base,finest", [CASES[0], CASES[3], CASES[4]])
def test_gradcheck_table_and_input(d, L, T, base, finest):
    e = _enc(d, L, T, base, finest, F=3)
    torch.manual_seed(2)
    # keep points off cell boundaries, where the input derivative jumps
    x = (torch.rand(6, d, dtype=torch.float64) * 1.8 - 0.9).requires_grad_()
    assert torch.autograd.gradcheck(lambda x_, t_: e(x_), (x, e.embeddings), eps=1e-7, atol=1e-6)
    assert torch.autograd.gradcheck(lambda t_: e(x.detach()), (e.embeddings,), eps=1e-6, atol=1e-6)


def test_hash_formula_matches_instant_ngp_uint32_arithmetic():
    # one hashed level, T = 2^k and T not a power of 2; vertices far enough out that the products overflow 32 bits
    for T in (64, 61):
        e = HashGridEncoding(3, levels=1, table=T, base_resolution=300, finest_resolution=300, dtype=torch.float64)
        assert e.n_dense == 0
        with torch.no_grad():
            e.embeddings.copy_(torch.arange(T, dtype=torch.float64)[:, None].repeat(1, 2))
        for v in [(0, 0, 0), (1, 2, 3), (299, 150, 7), (300, 300, 300)]:
            x = torch.tensor([[2 * vi / 300 - 1 for vi in v]], dtype=torch.float64)
            expect = ((v[0] * 1) ^ ((v[1] * 2654435761) & 0xFFFFFFFF) ^ ((v[2] * 805459861) & 0xFFFFFFFF)) % T
            assert e(x)[0, 0].item() == pytest.approx(expect, abs=1e-9), (T, v)


@pytest.mark.parametrize("d,T", [(1, 1000), (1, 7), (2, 1000), (2, 50), (3, 2000), (3, 100)])
def test_points_on_grid_vertices_return_the_table_entry(d, T):
    N = 6
    e = _enc(d, 1, T, N, N)  # one level of resolution N: dense or hashed depending on T
    assert e.n_dense == int((N + 1) ** d <= T)
    verts = list(itertools.product(range(N + 1), repeat=d))
    x = torch.tensor([[2 * vi / N - 1 for vi in v] for v in verts], dtype=torch.float64)
    expect = torch.stack([e.embeddings[ref_index(list(v), N, T, d)] for v in verts]).detach()
    torch.testing.assert_close(e(x).detach(), expect, rtol=0, atol=1e-12)


def test_level_resolutions_and_parameter_count():
    assert level_resolutions(16, 16, 512) == ref_resolutions(16, 16, 512)
    res = level_resolutions(16, 16, 512)
    assert res[0] == 16 and res[-1] == 512 and res == sorted(res)
    assert level_resolutions(1, 16, 512) == [16]
    # d = 2, L = 4, base 4, finest 32: N = 4, 8, 16, 32 -> min(T, (N + 1)^2) = 25, 81, 256, 256
    e = HashGridEncoding(2, levels=4, table=256, base_resolution=4, finest_resolution=32, features=3)
    assert e.resolutions == [4, 8, 16, 32]
    assert count_params(e) == 3 * (25 + 81 + 256 + 256) == HashGridEncoding.count(2, 4, features=3, table=256,
                                                                                base_resolution=4,
                                                                                finest_resolution=32)
    assert e.out_features == 12 and e.n_dense == 2
    assert HashGridEncoding(3, log2_table=10).table == 1024
    # the paper's initialisation
    e = HashGridEncoding(2, log2_table=12)
    assert e.embeddings.abs().max() <= 1e-4 and e.embeddings.std() > 4e-5
    assert set(e.state_dict()) == {"embeddings"}  # the derived buffers are not saved


def test_saved_tensors_are_indices_and_weights_only():
    e = HashGridEncoding(2, levels=8, table=4096, finest_resolution=256)
    x = torch.rand(1000, 2) * 2 - 1
    saved = []
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        y = e(x)
    B, L, C = 1000, 8, 4
    assert sum(t.numel() * t.element_size() for t in saved) == B * L * C * (8 + 4)  # int64 index + fp32 weight
    y.sum().backward()
    assert e.embeddings.grad is not None and e.embeddings.grad.abs().sum() > 0
    # with an input gradient, x (and the table, a leaf: no copy) are kept as well
    saved.clear()
    with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
        e(x.requires_grad_())
    assert sorted(t.shape for t in saved if t.dtype.is_floating_point and t.dim() == 2) == [(1000, 2),
                                                                                            tuple(e.embeddings.shape)]


def test_second_derivatives_raise_a_clear_error():
    e = _enc(2, 3, 64, 4, 16)
    x = torch.rand(4, 2, dtype=torch.float64).requires_grad_()
    with pytest.raises(RuntimeError, match="second derivatives"):
        torch.autograd.grad(e(x).sum(), x, create_graph=True)
    (gx,) = torch.autograd.grad(e(x).sum(), x)  # first derivatives are fine
    assert gx.shape == x.shape


def test_leading_dims_float32_and_bad_input():
    e = HashGridEncoding(3, levels=4, table=512, base_resolution=4, finest_resolution=32)
    x = torch.rand(2, 5, 3) * 2 - 1
    y = e(x)
    assert y.shape == (2, 5, 8) and y.dtype == torch.float32
    torch.testing.assert_close(y.reshape(10, 8), e(x.reshape(10, 3)))
    e64 = HashGridEncoding(3, levels=4, table=512, base_resolution=4, finest_resolution=32, dtype=torch.float64)
    with torch.no_grad():
        e64.embeddings.copy_(e.embeddings)
    torch.testing.assert_close(y, e64(x.double()).float(), rtol=1e-4, atol=1e-7)
    with pytest.raises(ValueError, match="3 input coordinates"):
        e(torch.zeros(4, 2))
    with pytest.raises(ValueError, match="1, 2 or 3"):
        HashGridEncoding(4)
    assert e(torch.zeros(0, 3)).shape == (0, 8)


# ----------------------------------------------------------------------------------------------
# Registry


def test_hash_model_honours_the_budget_and_rebuilds():
    for d, o in ((2, 1), (2, 3), (1, 1), (3, 1)):
        m = build("hash", d, o, params=200_000)
        assert abs(count_params(m) - 200_000) < 0.01 * 200_000, (d, o, count_params(m))
    m = build("hash", 2, 1, params=50_000, levels=8, features=4)
    enc = m.body[0]
    mlp = (32 * 64 + 64) + (64 * 64 + 64) + (64 + 1)
    assert count_params(m) == HashGridEncoding.count(2, 8, features=4, table=m.config["table"]) + mlp
    cfg = json.loads(json.dumps(m.config))
    m2 = from_config(cfg)
    m2.load_state_dict(m.state_dict())
    x = torch.rand(7, 2) * 2 - 1
    torch.testing.assert_close(m(x), m2(x))
    assert enc.levels == 8 and enc.features == 4 and enc.table == m.config["table"]


def test_siren_hash_encoding_option_and_unchanged_default():
    assert count_params(build("siren", 2, 1)) == 198_401
    m = build("siren", 2, 1, hidden=32, hidden_layers=1, encoding="hash", encoding_options={"table": 256, "levels": 4})
    assert isinstance(m.body[0], HashGridEncoding) and m.body[1].linear.in_features == 8
    assert m(torch.rand(5, 2)).shape == (5, 1)
    m2 = from_config(json.loads(json.dumps(m.config)))
    assert count_params(m2) == count_params(m)
    with pytest.raises(ValueError, match="encoding"):
        build("siren", 2, 1, hidden=8, encoding="fourier")


def test_fit_signal_hash_on_a_tiny_image_and_audio(tmp_path):
    from conftest import smooth_image
    from inr import fitting
    from inr.signals import image_from_array, test_audio

    img = image_from_array(smooth_image(32, 32))
    m = fit_and_save(img, model="hash", params=20_000, steps=150, batch=256, seconds=None, quiet=True,
                           out=tmp_path / "img")
    assert m["params"] == pytest.approx(20_000, rel=0.01) and m["psnr"] > 30
    net, _ = fitting.load_run(tmp_path / "img")  # rebuilt from config.json: same table size, same weights
    again = fitting.signal_metrics(img, fitting.predict(net, img.coords(), "image").numpy())
    assert again["psnr"] == pytest.approx(m["psnr"], abs=1e-9)
    a = fit_and_save(test_audio(0.25, 8000), model="hash", params=20_000, steps=100, batch=512, seconds=None,
                           quiet=True, out=tmp_path / "aud")
    assert a["kind"] == "audio" and a["mse"] < 0.05 and (tmp_path / "aud" / "reconstruction.wav").exists()


def test_cpu_defaults_for_hash(tmp_path):
    from conftest import smooth_image
    from inr import fitting
    from inr.signals import image_from_array

    assert spec("hash").task("image").lr == 1e-2
    m = fit_and_save(image_from_array(smooth_image(16, 16)), model="hash", params=5_000, steps=2,
                           batch="auto", device="cpu", seconds=None, quiet=True, out=tmp_path / "r")
    assert m["batch"] == spec("hash").task("image").cpu_batch == 2048 and m["lr"] == 1e-2
    assert build("hash", 2, 1, table=64).body[0].levels == 8  # the model's default level count


def test_fine_1d_level_interpolates_precisely_in_float32():
    # N = 2^17: in float32, u N would carry only ~6 bits of the local coordinate w
    N = 1 << 17
    e = HashGridEncoding(1, levels=1, base_resolution=N, finest_resolution=N, table=N + 1, features=1)
    with torch.no_grad():
        e.embeddings.copy_(torch.arange(N + 1, dtype=torch.float32)[:, None] / N)  # f(x) = u exactly
    x = torch.rand(1000) * 2 - 1
    u = (x.double() + 1) / 2
    torch.testing.assert_close(e(x[:, None])[:, 0].double(), u, rtol=0, atol=1e-6)
