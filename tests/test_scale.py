"""Issue "Fast at every size": grid prediction, banded SSIM, --params auto, the evaluation cadence."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from conftest import smooth_image
from inr import fitting
from inr.fitting import FitConfig
from inr.layers.hashgrid import HashGridEncoding
from inr.models import HASH_PARAMS_MAX, HASH_PARAMS_MIN, HASH_PARAMS_PER_VALUE, build, count_params
from inr.signals import image_from_array

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _mesh(axes):
    g = torch.meshgrid(*axes, indexing="ij")
    return torch.stack([a.reshape(-1) for a in g], -1)


@pytest.mark.parametrize("d,table", [(1, 64), (2, 4096), (2, 1000), (3, 777)])
def test_grid_corners_equal_the_per_point_corners(d, table):
    # dense and hashed levels (table a power of 2 or not); the grid path must give the same indices, weights
    # and features as the per-point forward on the meshgrid (which test_hashgrid checks against a reference)
    e = HashGridEncoding(d, levels=5, table=table, base_resolution=3, finest_resolution=40)
    torch.nn.init.normal_(e.embeddings)
    axes = [torch.linspace(-1, 1, n) for n in (37, 11, 5)[:d]]
    axes[0] = torch.cat([axes[0], torch.tensor([-1.3, 1.2])])   # outside [-1, 1]: linear extrapolation
    x = _mesh(axes)
    idx, wts = e.corners(*e.positions(x))
    gidx, gwts = e.grid_corners(axes)
    assert torch.equal(idx, gidx) and torch.equal(wts, gwts)
    with torch.no_grad():
        assert torch.equal(e(x), e.grid_forward(axes))


@pytest.mark.parametrize("model,shape", [("hash", (23, 17, 3)), ("siren", (9, 30, 1))])
def test_predict_signal_matches_predict(model, shape):
    sig = image_from_array(smooth_image(*shape) / 255.0)
    net = build(model, 2, shape[2], params=3000)
    want = fitting.predict(net, sig.coords(), "image")
    got = fitting.predict_signal(net, sig, chunk=40)   # blocks of 1-2 rows
    # the same values up to float32 rounding (a matrix product may round differently for another block size)
    assert got.dtype == torch.float32 and torch.allclose(got.double(), want, rtol=0, atol=1e-6)


def test_banded_ssim_equals_scikit_image():
    rng = np.random.default_rng(0)
    for shape in ((fitting.SSIM_BAND * 2 + 37, 40, 3), (fitting.SSIM_BAND + 9, 21, 1)):
        t = rng.random(shape)
        p = np.clip(t + 0.1 * rng.standard_normal(shape), 0, 1)
        kw = {"channel_axis": 2} if shape[2] > 1 else {}
        ref = structural_similarity(t if shape[2] > 1 else t[..., 0], p if shape[2] > 1 else p[..., 0],
                                    data_range=1.0, win_size=7, **kw)
        assert fitting._ssim(p, t) == pytest.approx(ref, abs=1e-12)


def test_params_auto_follows_the_signal_size():
    cfg = FitConfig()
    assert cfg.model.params == "auto" and cfg.eval_every is None and cfg.train.eval_fraction == fitting.EVAL_FRACTION
    dev = torch.device("cpu")
    for values_side in (300, 1500):
        sig = image_from_array(np.zeros((values_side, values_side, 3)))
        r = cfg.resolved("image", dev, sig)
        want = min(HASH_PARAMS_MAX, max(HASH_PARAMS_MIN, round(HASH_PARAMS_PER_VALUE * values_side ** 2 * 3)))
        assert r.model.params == want
        assert r.model.options["finest_resolution"] == max(512, values_side)
        net = r.model.build(2, 3, "image")
        assert abs(count_params(net) - want) < 0.01 * want
    # a coarse grid (finest level 32): the budget is capped where the hash grid stops growing (all levels dense)
    small = FitConfig(model={"name": "hash", "options": {"finest_resolution": 32}}).resolved("image", dev, sig)
    assert small.model.params < HASH_PARAMS_MIN
    assert count_params(small.model.build(2, 3, "image")) == small.model.params
    # an explicit budget stays; other families' auto budget is 200,000
    assert FitConfig(model={"name": "hash", "params": 5000}).resolved("image", dev, sig).model.params == 5000
    assert FitConfig(model={"name": "siren"}).resolved("image", dev, sig).model.params == 200_000


def test_evaluation_cadence_is_one_of_two():
    dev = torch.device("cpu")
    sig = image_from_array(np.zeros((8, 8, 1)))
    timed = FitConfig().resolved("image", dev, sig)
    assert timed.eval_every is None and timed.train.eval_fraction == fitting.EVAL_FRACTION
    steps = fitting.with_overrides(FitConfig(), {"eval_every": 7}).resolved("image", dev, sig)
    assert steps.eval_every == 7 and steps.train.eval_fraction is None
    untimed = fitting.with_overrides(FitConfig(), {"train.seconds": None}).resolved("image", dev, sig)
    assert untimed.eval_every == fitting.EVAL_EVERY and untimed.train.eval_fraction is None


def test_a_large_signal_is_evaluated_on_a_fixed_subset(monkeypatch):
    monkeypatch.setattr(fitting, "EVAL_POINTS", 64)
    sig = image_from_array(smooth_image(16, 16) / 255.0)
    f = fitting.fit(sig, model="siren", params=None, hidden=8, hidden_layers=1, steps=5, batch=32, seconds=None,
                    eval_every=2, quiet=True)
    m = f.metrics
    assert m["eval_points"] == 64 and m["evaluations"] == 3
    # the final metrics cover the whole image (scikit-image on the prediction), the subset only estimates it
    from skimage.metrics import peak_signal_noise_ratio

    pred = np.clip(f.prediction.numpy().reshape(16, 16, 1).astype(np.float64), 0, 1)
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(sig.values, pred, data_range=1.0), abs=1e-9)


def test_writing_reserve_covers_setup_evaluations_and_files_at_most_half_the_budget(monkeypatch):
    sig = image_from_array(smooth_image(32, 32) / 255.0)
    net = build("hash", 2, 1, params=5000)
    # a tiny image: the evaluations' share, the set-up so far and the fixed cost of the files
    small = fitting.writing_reserve(net, sig, 60.0, 0.05, spent=0.5)
    assert 0.05 * 60 + 0.5 + fitting.FILES_SECONDS <= small < 0.05 * 60 + 0.5 + fitting.FILES_SECONDS + 0.5
    monkeypatch.setitem(fitting.WRITE_COST, "image", 1e9)          # writing "costs" ages: at most half the budget
    assert fitting.writing_reserve(net, sig, 60.0, 0.05) == 30.0
