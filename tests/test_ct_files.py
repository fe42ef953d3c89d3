"""CT from files and the library's result object: ``simulate`` -> files -> ``recon --sinogram`` (raw counts
with flat/dark correction, npy, TIFF, 16-bit PNG), and ``tomography.reconstruct`` on a scan without truth
(its residual against an independent matrix-free projector, render, save)."""
import json

import numpy as np
import pytest
import torch

from inr.errors import InputError
from tomography import CTConfig, Projector, Scan, fan_geometry, make_geometry, reconstruct, scan_image, uniform_angles
from tomography.cli import main
from tomography.io import line_integrals, read_angles, read_sinogram

TINY = ["--model", "hash", "--params", "800", "--steps", "3", "--sart-iterations", "1", "--tv-iterations", "2",
        "--threads", "1", "--quiet"]


def _recon_command(capsys) -> list:
    out = capsys.readouterr().out
    line = out.strip().splitlines()[-1].split()
    assert line[:4] == ["python", "-m", "tomography", "recon"]
    return line[3:]


@pytest.mark.parametrize("geometry,extra", [("fan", ["--raw", "--photons", "1e5"]), ("parallel", ["--format", "tif"])])
def test_simulate_writes_files_that_recon_reads_back_alone(tmp_path, capsys, geometry, extra):
    scan_dir, run_dir = tmp_path / "scan", tmp_path / "run"
    assert main(["simulate", "--phantom", "thorax", "--size", "16", "--views", "8", "--geometry", geometry, *extra,
                 "--out", str(scan_dir)]) == 0
    argv = _recon_command(capsys)
    info = json.loads((scan_dir / "scan.json").read_text())
    assert info["geometry"]["kind"] == geometry and info["views"] == 8
    assert main([*argv, *TINY, "--out", str(run_dir)]) == 0
    m = json.loads((run_dir / "metrics.json").read_text())["metrics"]
    assert set(m) == {"fbp", "sart", "tv", "hash"}
    assert all(0 <= v["residual"] < 10 and "psnr" in v for v in m.values())
    cfg = json.loads((run_dir / "config.json").read_text())
    assert cfg["sinogram"].startswith(str(scan_dir)) and cfg["geometry"]["kind"] == geometry
    # the file path reproduces the simulated scan: counts -> -log(counts / I0) / mu as tomography.noise defines
    g = fan_geometry((16, 16), uniform_angles(8, 360)) if geometry == "fan" else make_geometry((16, 16), uniform_angles(8))
    from tomography.phantoms import thorax
    want = scan_image(thorax((16, 16)), g, 1e5 if extra[0] == "--raw" else None, seed=0)
    sino = read_sinogram(next(scan_dir.glob("sinogram.*")))
    if extra[0] == "--raw":
        assert np.array_equal(sino, want.info["counts"])
        sino = line_integrals(sino, np.load(scan_dir / "flat.npy"), np.load(scan_dir / "dark.npy"), want.mu)
        np.testing.assert_allclose(sino, -np.log(want.info["counts"] / 1e5) / want.mu, rtol=1e-12)
    np.testing.assert_allclose(sino, want.measured.numpy(), rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(read_angles(scan_dir / "angles.txt", 8), np.asarray(g.theta))


def test_sixteen_bit_png_and_text_angles_are_read_exactly(tmp_path):
    from PIL import Image

    a = (np.arange(12 * 20, dtype=np.uint16).reshape(12, 20) * 271)
    Image.fromarray(a).save(tmp_path / "s.png")
    np.testing.assert_array_equal(read_sinogram(tmp_path / "s.png"), a.astype(np.float64))
    (tmp_path / "a.txt").write_text("0, 1.5\n3e1 45\n")
    np.testing.assert_array_equal(read_angles(tmp_path / "a.txt", 4), [0.0, 1.5, 30.0, 45.0])


def test_flat_dark_correction_by_hand():
    counts = np.array([[90.0, 50.0, 10.0], [100.0, 7.0, 0.0]])
    flat, dark = np.array([110.0, 60.0, 20.0]), np.array([10.0, 5.0, 5.0])
    got = line_integrals(counts, flat, dark, mu=2.0)
    t = np.maximum((counts - dark) / (flat - dark), 1e-6)
    np.testing.assert_allclose(got, -np.log(t) / 2.0)
    assert got[0, 0] == pytest.approx(-np.log(0.8) / 2) and got[1, 2] == pytest.approx(-np.log(1e-6) / 2)


@pytest.mark.filterwarnings("ignore:Radon transform")
def test_reconstruct_a_scan_without_truth(tmp_path):
    from skimage.transform import radon as sk_radon

    torch.manual_seed(0)
    n = 24
    yy, xx = np.mgrid[:n, :n] - n // 2
    truth = ((xx / 8.0) ** 2 + (yy / 5.0) ** 2 <= 1).astype(float) * 0.7
    geom = make_geometry((n, n), uniform_angles(12), True)
    y = Projector.for_geometry(geom, dtype=torch.float64).forward(torch.from_numpy(truth)).float()
    scan = Scan.from_sinogram(y.numpy(), geom)
    r = reconstruct(scan, CTConfig(model="hash", params=1500, steps=20, sart_iterations=2, tv_iterations=5,
                                   device="cpu"))
    assert r.image.shape == (n, n) and set(r.metrics) == {"fbp", "sart", "tv", "hash"}
    assert all("psnr" not in v for v in r.metrics.values()) and len(r.history) > 0
    # the residual against scikit-image's own radon (an independent projector), float64
    for name, img in {**r.baselines, "hash": r.image}.items():
        sk = sk_radon(img, np.asarray(geom.theta), circle=True).T
        want = np.linalg.norm(sk - y.double().numpy()) / np.linalg.norm(y.double().numpy())
        assert r.metrics[name]["residual"] == pytest.approx(want, rel=1e-4, abs=1e-6), name
    # render: the same grid gives the image; a (2n - 1) grid contains the original points at even indices
    np.testing.assert_allclose(r.render((n, n)), r.image, rtol=0, atol=1e-6)   # another batch: float32 rounding
    assert np.array_equal(r.render((n, n)) != 0, r.image != 0)
    fine = r.render((2 * n - 1, 2 * n - 1))
    both = (fine[::2, ::2] != 0) & (r.image != 0)
    assert both.sum() > 0.5 * (r.image != 0).sum()
    np.testing.assert_allclose(fine[::2, ::2][both], r.image[both], atol=1e-5)
    out = tmp_path / "saved"
    assert r.save(out) == str(out.resolve())
    assert (out / "metrics.json").is_file() and (out / "model.pt").is_file() and not (out / "comparison.png").exists()
    with pytest.raises(InputError, match="already exists"):
        r.save(out)
