"""Sparse-view CT additions: the thorax phantom, the unbiased view-subset loss (by enumerating every
subset), the INR TV term against finite differences, and benchmarks/ct.py's protocols (--quick)."""
import itertools
import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from tomography import Projector, uniform_angles
from tomography.phantoms import make, thorax
from tomography.recon import tv_penalty, view_subset_loss

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_thorax_shape_range_determinism_and_structures():
    a = thorax((128, 128))
    assert a.shape == (128, 128) and a.dtype == np.float64
    assert a.min() >= 0.0 and a.max() <= 1.0 and a.max() > 0.9
    np.testing.assert_array_equal(a, thorax((128, 128)))          # deterministic
    b = thorax((128, 128), seed=1)
    assert not np.array_equal(a, b)                               # the seed moves the vessel texture ...
    assert np.abs(a - b).mean() < 0.02                            # ... and nothing else of note
    assert thorax((96, 64)).shape == (96, 64)
    yy, xx = np.mgrid[:128, :128]
    assert a[(yy - 64) ** 2 + (xx - 64) ** 2 > 64 ** 2].max() == 0.0   # zero outside the scanned disc
    # pixel (row, col) of normalised (x, y): col = (x + 1) / 2 * 127
    px = lambda x, y: a[int(round((y + 1) / 2 * 127)), int(round((x + 1) / 2 * 127))]
    box = lambda x0, x1, y0, y1: a[int((y0 + 1) / 2 * 127):int((y1 + 1) / 2 * 127) + 1,
                                   int((x0 + 1) / 2 * 127):int((x1 + 1) / 2 * 127) + 1]
    lungs = [box(-0.45, -0.35, -0.2, 0.1), box(0.35, 0.45, -0.2, 0.1)]
    body = box(-0.2, -0.15, 0.42, 0.48)                           # soft tissue between lung and spine
    assert max(float(np.median(l)) for l in lungs) < 0.25 and body.min() > 0.45   # lungs darker than the body
    lung = box(-0.6, -0.3, -0.4, 0.3)
    assert ((lung > 0.25) & (lung < 0.6)).mean() > 0.02           # vessels inside the lung
    assert px(0.0, 0.40) > 0.7 and px(0.0, 0.66) > 0.9            # vertebral body, spinous process
    assert px(0.0, 0.545) < 0.6                                   # spinal canal
    assert 0.55 < px(0.12, 0.03) < 0.7                            # heart (ventricle)
    assert px(0.0, -0.53) > 0.7                                   # sternum (marrow 0.75)
    assert px(0.0, 0.0) > 0.4 and px(0.0, -0.8) == 0.0            # mediastinum; air in front of the chest
    np.testing.assert_array_equal(make("thorax", (32, 32)), thorax((32, 32)))
    with pytest.raises(ValueError, match="unknown phantom"):
        make("brain", (32, 32))


def test_view_subset_loss_is_unbiased_by_enumeration():
    n, k, size = 5, 2, 12
    P = Projector((size, size), uniform_angles(n), True, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.rand(size, size, generator=g, dtype=torch.float64, requires_grad=True)
    y = torch.rand(n, size, generator=g, dtype=torch.float64)
    full = torch.mean((P.forward(x) - y) ** 2)
    subsets = list(itertools.combinations(range(n), k))
    losses = [view_subset_loss(P, x, y, list(s)) for s in subsets]
    mean = torch.stack(losses).mean()
    assert abs(mean.item() - full.item()) <= 1e-12 * full.item()
    # and the expected gradient equals the full gradient
    gfull, = torch.autograd.grad(full, x)
    gmean, = torch.autograd.grad(mean, x)
    torch.testing.assert_close(gmean, gfull, rtol=1e-10, atol=1e-14)
    # the subset projection equals the full one indexed, its gradient the indexed adjoint
    v = torch.tensor([3, 0])
    torch.testing.assert_close(P.forward_views(x, v), P.forward(x)[v], rtol=0, atol=1e-12)
    w = torch.rand(2, size, generator=g, dtype=torch.float64)
    gv, = torch.autograd.grad((P.forward_views(x, v) * w).sum(), x)
    gi, = torch.autograd.grad((P.forward(x)[v] * w).sum(), x)
    torch.testing.assert_close(gv, gi, rtol=0, atol=1e-12)


def test_tv_penalty_gradient_by_finite_differences():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(6, 7, generator=g, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: tv_penalty(t, 1e-2), (x,), eps=1e-6, atol=1e-6)
    assert float(tv_penalty(torch.full((5, 5), 0.3, dtype=torch.float64))) == pytest.approx(0.0, abs=1e-15)
    # a unit step between two halves: one edge of height 1 per row, 5 rows, 25 pixels
    step = torch.zeros(5, 5, dtype=torch.float64)
    step[:, 3:] = 1
    assert float(tv_penalty(step, 1e-9)) == pytest.approx(5 / 25, rel=1e-6)


@pytest.mark.parametrize("protocol", ["paper", "cpu10"])
def test_benchmark_protocols_quick(tmp_path, protocol):
    out = tmp_path / "res"
    cmd = [sys.executable, os.path.join(ROOT, "benchmarks", "ct.py"), "--quick", "--quiet", "--protocol", protocol,
           "--images", "thorax", "--models", "hash", "siren", "--no-timing", "--threads", "1", "--out", str(out)]
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    table = (out / "table.md").read_text()
    assert "Status: complete" in table and f"Protocol: {protocol}" in table
    assert "| thorax | 24 | 12 | TV |" in table and "| thorax | 24 | 12 | hash |" in table
    m = json.loads((out / "metrics.json").read_text())
    assert {row["method"] for row in m["rows"]} == {"FBP", "SART", "TV", "hash", "siren"}
    assert (out / "thorax-12v.png").is_file()
    assert not any(p.name.startswith(".") for p in tmp_path.iterdir())   # staging folder renamed away
    before = sorted(p.name for p in out.iterdir())
    r = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT)     # the same --out again
    assert r.returncode == 2 and "already exists" in r.stderr
    assert sorted(p.name for p in out.iterdir()) == before and (out / "table.md").read_text() == table


def test_cli_thorax_phantom(tmp_path):
    from tomography.cli import main

    out = tmp_path / "run"
    assert main(["recon", "--phantom", "thorax", "--size", "16", "--views", "8", "--model", "hash", "--params", "800",
                 "--steps", "3", "--sart-iterations", "1", "--tv-iterations", "2", "--view-batch", "3",
                 "--quiet", "--threads", "1", "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["image"] == "tomography.phantoms.thorax" and cfg["view_batch"] == 3 and cfg["inr_tv"] > 0


def test_level_schedule_switches_finer_levels_on():
    from inr.models import build
    from tomography.recon import LevelSchedule

    torch.manual_seed(0)
    net = build("hash", 2, 1, table=64, levels=4, features=2, base_resolution=2, finest_resolution=16)
    enc = net.body[0]
    x = torch.rand(10, 2) * 2 - 1
    full = enc(x)
    sched = LevelSchedule(net, warm=0.5)
    sched.update(0.0)
    out = enc(x)
    torch.testing.assert_close(out[:, :2], full[:, :2])
    assert torch.all(out[:, 2:] == 0)
    sched.update(0.25)                      # alpha 0.5: levels 0, 1 on, level 2 at half, level 3 off
    torch.testing.assert_close(enc(x), full * torch.tensor([1, 1, 1, 1, 0.5, 0.5, 0, 0]))
    sched.update(0.5)
    torch.testing.assert_close(enc(x), full)
    sched.remove()
    with pytest.raises(ValueError, match="hash-grid"):
        LevelSchedule(build("siren", 2, 1, hidden=8, hidden_layers=1), 0.5)


def test_cached_hash_encoding_matches_the_model():
    """HashGridEncoding.fix_points (CTImage's cached corners) gives bit-for-bit the plain encoding's values
    and table gradients, also under per-level weights (coarse-to-fine)."""
    from tomography.recon import CTImage, LevelSchedule
    from inr.models import build

    torch.manual_seed(0)
    net = build("hash", 2, 1, table=200, levels=4, features=2, base_resolution=2, finest_resolution=16)
    support = torch.zeros(12, 12, dtype=torch.bool)
    support[2:10, 1:11] = True
    img = CTImage(net, (12, 12), support=support)
    enc = net.body[0]
    assert img.cached and enc.uses_fixed_points(img.grid)
    assert not enc.uses_fixed_points(img.grid + 1e-3) and not enc.uses_fixed_points(img.grid[:-1])
    with torch.no_grad():
        enc.embeddings.normal_()

    def plain(fn):
        keep = (enc.fixed_x, enc.fixed_idx, enc.fixed_wts)
        enc.release_points()
        try:
            return fn()
        finally:
            enc.fixed_x, enc.fixed_idx, enc.fixed_wts = keep

    def grads():
        return [g for g in torch.autograd.grad((img() ** 2).sum(), list(net.parameters()))]

    sched = LevelSchedule(net, 0.5)
    for progress in (0.1, 1.0):                   # level weights on, then off
        sched.update(progress)
        torch.testing.assert_close(img(), plain(img), rtol=0, atol=0)
        for g1, g2 in zip(grads(), plain(grads)):
            torch.testing.assert_close(g1, g2, rtol=0, atol=0)
    sched.remove()
    assert enc.level_weights is None
