"""Sparse-view CT: projector vs scikit-image, exact adjoint, gradients by finite differences, noise
statistics vs theory, FBP of a disc vs the analytic disc, baselines in the right frame, an INR that
beats its initialisation, and the CLI's error handling."""
import json
import os
import subprocess
import sys
import warnings

import numpy as np
import pytest
import torch
from skimage.data import shepp_logan_phantom
from skimage.transform import radon as sk_radon, resize

from tomography import Projector, make_geometry, radon, rotate_sum_radon, uniform_angles
from tomography.baselines import _div, _grad, fbp, sart, tv_reconstruct
from tomography.config import CTConfig
from tomography.noise import add_noise, expected_counts
from tomography.recon import Scan, load_image, reconstruct_inr, simulate

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _rel(a, b):
    return float(np.linalg.norm(np.asarray(a) - np.asarray(b)) / np.linalg.norm(np.asarray(b)))


def _sk(img, theta, circle):
    with warnings.catch_warnings():  # skimage warns when circle=True and the corners are not zero
        warnings.simplefilter("ignore")
        return sk_radon(img, theta, circle=circle).T  # skimage: (detectors, angles)


ANGLE_SETS = {"uniform-30": uniform_angles(30), "random-0-360": np.random.default_rng(1).uniform(0, 360, 9),
              "single-oblique": np.array([37.5]), "negative-and-over-180": np.array([-20.0, 0.0, 90.0, 200.0])}


@pytest.mark.parametrize("shape", [(48, 48), (33, 47), (40, 29)])
@pytest.mark.parametrize("circle", [True, False])
@pytest.mark.parametrize("angles", list(ANGLE_SETS))
def test_projector_matches_skimage(shape, circle, angles):
    theta = ANGLE_SETS[angles]
    img = resize(shepp_logan_phantom(), shape) + 0.3 * np.random.default_rng(0).random(shape)
    ref = _sk(img, theta, circle)
    ours = radon(torch.from_numpy(img), theta, circle).numpy()
    assert ours.shape == ref.shape
    assert _rel(ours, ref) <= 0.02
    ours32 = radon(torch.from_numpy(img).float(), theta, circle).numpy()
    assert _rel(ours32, ref) <= 0.02


@pytest.mark.parametrize("circle", [True, False])
def test_rotate_and_sum_reference_matches_skimage(circle):
    img = np.random.default_rng(2).random((31, 44))
    theta = ANGLE_SETS["random-0-360"]
    assert _rel(rotate_sum_radon(torch.from_numpy(img), theta, circle).numpy(), _sk(img, theta, circle)) <= 0.02


@pytest.mark.parametrize("shape,circle", [((37, 52), True), ((37, 52), False), ((32, 32), True)])
def test_adjoint_identity_float64(shape, circle):
    P = Projector(shape, ANGLE_SETS["random-0-360"], circle, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(3, *shape, generator=g, dtype=torch.float64)
    y = torch.randn(3, *P.sinogram_shape, generator=g, dtype=torch.float64)
    lhs, rhs = float((P.forward(x) * y).sum()), float((x * P.adjoint(y)).sum())
    assert abs(lhs - rhs) <= 1e-4 * abs(lhs)
    # batching: a batch equals the images one at a time
    assert torch.allclose(P.forward(x)[1], P.forward(x[1]))


def test_gradients_by_finite_differences():
    P = Projector((7, 9), [0.0, 33.0, 101.0], circle=False, dtype=torch.float64)
    x = torch.rand(2, 7, 9, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(P.forward, (x,))
    assert torch.autograd.gradgradcheck(P.forward, (x,))
    y = torch.rand(2, *P.sinogram_shape, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(P.adjoint, (y,))


def test_tv_gradient_and_divergence_are_adjoint():
    g = torch.Generator().manual_seed(3)
    x, px, py = (torch.randn(6, 11, generator=g, dtype=torch.float64) for _ in range(3))
    gx, gy = _grad(x)
    assert abs(float((gx * px + gy * py).sum() + (x * _div(px, py)).sum())) < 1e-10


def test_bad_geometry_is_a_clear_error():
    with pytest.raises(ValueError, match="at least one projection angle"):
        make_geometry((8, 8), [])
    with pytest.raises(ValueError, match="positive integer"):
        uniform_angles(0)
    P = Projector((8, 8), [0.0, 45.0])
    with pytest.raises(ValueError, match="image must have shape"):
        P.forward(torch.zeros(8, 9))


def test_poisson_and_readout_noise_statistics():
    n, photons, mu, readout = 200_000, 500.0, 0.05, 7.0
    p = torch.full((n,), 20.0, dtype=torch.float64)  # line integral 20 -> mean counts 500 e^-1
    lam = float(expected_counts(p[:1], photons, mu))
    assert lam == pytest.approx(photons * np.exp(-1.0))
    g = torch.Generator().manual_seed(0)
    _, counts = add_noise(p, photons, 0.0, mu, generator=g, return_counts=True)
    se = np.sqrt(lam / n)
    assert abs(float(counts.mean()) - lam) < 5 * se
    assert float(counts.var()) == pytest.approx(lam, rel=0.02)  # Poisson: variance = mean
    assert torch.all(counts == counts.round())
    _, counts = add_noise(p, photons, readout, mu, generator=g, return_counts=True)
    assert abs(float(counts.mean()) - lam) < 5 * np.sqrt((lam + readout ** 2) / n)
    assert float(counts.var()) == pytest.approx(lam + readout ** 2, rel=0.02)
    noisy = add_noise(p, photons, 0.0, mu, generator=g)  # -log(counts/I0)/mu, second-order delta method:
    assert float(noisy.mean()) == pytest.approx(20.0 + 1 / (2 * lam * mu), abs=0.015)  # log bias 1/(2 lam)
    assert float(noisy.var()) == pytest.approx(1.0 / (lam * mu ** 2), rel=0.05)
    with pytest.raises(ValueError, match="needs --photons"):
        add_noise(p, None, 1.0)


def test_fbp_of_analytic_disc():
    N, R, views = 64, 20.0, 90
    geom = make_geometry((N, N), uniform_angles(views), circle=True)
    u = np.arange(geom.n_det) - geom.n_det // 2
    row = 2 * np.sqrt(np.clip(R ** 2 - u ** 2.0, 0, None))  # exact line integrals of the unit disc
    rec = fbp(np.tile(row, (views, 1)), geom)
    yy, xx = np.mgrid[:N, :N]
    r = np.hypot(yy - geom.axis[0], xx - geom.axis[1])
    assert abs(rec[r < R - 2].mean() - 1.0) < 0.02
    assert np.abs(rec[r < R - 2] - 1.0).max() < 0.1
    assert np.abs(rec[(r > R + 2) & (r < N / 2 - 1)]).max() < 0.1


@pytest.mark.parametrize("circle", [True, False])
def test_baselines_reconstruct_in_the_image_frame(circle):
    truth = np.zeros((30, 41))
    truth[8:14, 20:29] = 1.0
    truth[18:24, 12:16] = 0.6
    scan = simulate(truth, views=40, circle=circle)
    for rec in (fbp(scan.measured, scan.geometry), sart(scan.measured, scan.geometry, 3),
                tv_reconstruct(scan.measured, scan.geometry, iterations=60)):
        assert rec.shape == truth.shape
        assert np.corrcoef(rec.ravel(), truth.ravel())[0, 1] > 0.9


def test_tv_beats_fbp_on_piecewise_constant_few_views():
    truth = resize(shepp_logan_phantom(), (48, 48))
    scan = simulate(truth, views=12)
    err = lambda rec: np.mean((np.clip(rec, 0, 1) - truth) ** 2)
    assert err(tv_reconstruct(scan.measured, scan.geometry, iterations=150)) < 0.7 * err(fbp(scan.measured, scan.geometry))


@pytest.mark.parametrize("model", ["siren", "lrnn-siren"])
def test_inr_reconstruction_beats_its_initialisation(model):
    torch.set_num_threads(1)
    truth = resize(shepp_logan_phantom(), (24, 24))
    scan = simulate(truth, views=16)
    image, result, _ = reconstruct_inr(scan, CTConfig(model=model, params=3000, steps=60, lr=2e-3, quiet=True,
                                                      log_every=1, device="cpu"))
    init = result.history[0]  # logged at step 1: loss and PSNR of the initial model
    final_err = np.mean((np.clip(image, 0, 1) - truth) ** 2)
    assert 10 * np.log10(1 / final_err) > init["psnr"] + 3.0
    assert result.history[-1]["loss"] < 0.2 * init["loss"]


@pytest.mark.parametrize("circle", [True, False])
def test_support_is_the_scanned_disc_and_the_inr_is_zero_outside(circle):
    """Projector.support: the pixels scikit-image's iradon keeps (it zeroes those outside its
    reconstruction circle); CTImage models only the supported pixels."""
    from tomography.recon import CTImage

    n = 32
    P = Projector((n, n), uniform_angles(20), circle=circle)
    sup = P.support().numpy()
    if circle:
        from skimage.transform import iradon
        kept = iradon(np.ones((n, 20)), uniform_angles(20), circle=True, filter_name=None) != 0
        np.testing.assert_array_equal(sup, kept)
        assert 0.7 < sup.mean() < 0.85                                  # ~pi/4 of the square
    else:
        assert sup.all()
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(2, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    img = CTImage(net, (n, n), support=torch.from_numpy(sup))
    x = img()
    assert img.grid.shape[0] == sup.sum()
    assert torch.all(x[~torch.from_numpy(sup)] == 0)
    full = CTImage(net, (n, n))()
    torch.testing.assert_close(x[torch.from_numpy(sup)], full[torch.from_numpy(sup)])


def _cli(*argv):
    from tomography.cli import main
    return main(list(argv))


def test_cli_runs_and_writes_run_folder(tmp_path):
    out = tmp_path / "run"
    assert _cli("recon", "--phantom", "--size", "16", "--views", "8", "--model", "siren", "--params", "800",
                "--steps", "5", "--tv-iterations", "5", "--sart-iterations", "1", "--photons", "1e4",
                "--readout-noise", "2", "--out", str(out), "--quiet") == 0
    for f in ("reconstruction.png", "sinogram.png", "comparison.png", "metrics.json", "config.json", "history.csv"):
        assert (out / f).is_file()
    m = json.loads((out / "metrics.json").read_text())
    assert set(m["metrics"]) == {"fbp", "sart", "tv", "siren"}
    assert m["seed"] == 0 and "torch" in m["versions"]
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["photons"] == 1e4 and cfg["mu"] > 0 and cfg["model"]["name"] == "siren"
    assert not [p for p in tmp_path.iterdir() if ".tmp-" in p.name]


def test_cli_errors_are_one_line_exit_2(tmp_path, capsys):
    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    assert _cli("recon", str(bad), "--out", str(tmp_path / "a")) == 2
    assert "cannot read" in capsys.readouterr().err
    from skimage import io
    stack = tmp_path / "stack.tif"
    io.imsave(stack, np.random.default_rng(0).random((5, 6, 7)).astype(np.float32), check_contrast=False)
    assert _cli("recon", str(stack), "--out", str(tmp_path / "b")) == 2
    assert "expected a 2-D" in capsys.readouterr().err
    # option errors come from argparse: one line, code 2 (returned by main, as for the other tools)
    assert _cli("recon", "--phantom", "--photons", "0", "--out", str(tmp_path / "c")) == 2
    assert "--photons must be > 0" in capsys.readouterr().err
    assert _cli("recon", "--phantom", "--readout-noise", "3", "--out", str(tmp_path / "d")) == 2
    assert "needs --photons" in capsys.readouterr().err
    assert not any((tmp_path / k).exists() for k in "abcd")
    r = subprocess.run([sys.executable, "-m", "tomography", "recon", "--phantom", "--views", "0"], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2
    assert "--views must be > 0" in r.stderr and "Traceback" not in r.stderr
    r = subprocess.run([sys.executable, "-m", "tomography", "recon", str(tmp_path / "missing.png")], cwd=ROOT,
                       capture_output=True, text=True, env={**os.environ, "PYTHONPATH": ROOT})
    assert r.returncode == 2 and "not found" in r.stderr and "Traceback" not in r.stderr


def test_benchmark_quick_setting(tmp_path):
    r = subprocess.run([sys.executable, os.path.join(ROOT, "benchmarks", "ct.py"), "--quick", "--quiet",
                        "--images", "shepp", "--step-timing", "--out", str(tmp_path / "ct")], capture_output=True,
                       text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr[-2000:]
    tmp_path = tmp_path / "ct"
    table = (tmp_path / "table.md").read_text()
    assert "Status: complete" in table and "| shepp | 24 | 12 | FBP |" in table
    m = json.loads((tmp_path / "metrics.json").read_text())
    assert {row["method"] for row in m["rows"]} == {"FBP", "SART", "TV", "lrnn-siren", "wire"}
    assert m["projector_timing"]["ours_forward_adjoint_ms"] > 0
    assert set(m["inr_step_timing"]["seconds_per_step"]) == {"lrnn-siren", "wire"}
    assert all(v > 0 for v in m["inr_step_timing"]["seconds_per_step"].values())
    assert (tmp_path / "shepp-12v.png").is_file()
