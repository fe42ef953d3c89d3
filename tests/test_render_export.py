"""inr render and inr export: the rendered and exported outputs agree with the model's own."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from inr.cli import main
from inr.fitting import Fit, predict


@pytest.fixture
def run(tmp_path, tiny_png, torch_one_thread):
    out = tmp_path / "run"
    assert main(["fit", str(tiny_png[0]), "--model", "siren", "--hidden", "16", "--hidden-layers", "1", "--steps",
                 "20", "--seconds", "none", "--quiet", "--out", str(out)]) == 0
    return out


def test_render_at_another_size_samples_the_model_at_pixel_centres(run, tmp_path):
    assert main(["render", str(run), "--size", "40x24", "--out", str(tmp_path / "r.png")]) == 0
    with Image.open(tmp_path / "r.png") as im:
        got = np.asarray(im, dtype=np.float64) / 255.0
    assert got.shape[:2] == (40, 24)
    f = Fit.load(run)
    ys, xs = (2 * np.arange(40) + 1) / 40 - 1, (2 * np.arange(24) + 1) / 24 - 1
    grid = np.stack(np.meshgrid(ys, xs, indexing="ij"), -1).reshape(-1, 2)
    want = np.clip(f.predict(grid), 0, 1).reshape(40, 24)
    assert np.abs(got.reshape(40, 24) - want).max() <= 0.5 / 255 + 1e-9   # 8-bit quantisation only
    # at the fitted size the render is the run's own reconstruction
    assert main(["render", str(run), "--out", str(tmp_path / "same.png")]) == 0
    with Image.open(tmp_path / "same.png") as a, Image.open(run / "reconstruction.png") as b:
        assert np.array_equal(np.asarray(a), np.asarray(b))
    assert main(["render", str(run), "--size", "40x24", "--out", str(tmp_path / "r.png")]) == 2   # exists


def test_export_matches_the_model(run, tmp_path):
    out = tmp_path / "m.pt2"
    assert main(["export", str(run), "--out", str(out)]) == 0
    prog = torch.export.load(out).module()
    x = torch.rand(100, 2) * 2 - 1
    want = predict(Fit.load(run).model, x, "image").float()
    torch.testing.assert_close(prog(x), want, rtol=0, atol=1e-6)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]
