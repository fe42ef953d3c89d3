"""`inr fit` / `inr eval` end to end on tiny inputs, checked against scikit-image and numpy references."""
from __future__ import annotations

from conftest import fit_and_save
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from PIL import Image
from skimage.metrics import peak_signal_noise_ratio, structural_similarity

from conftest import smooth_image
from inr import fitting
from inr.cli import main
from inr.signals import image_from_array, load

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROOT = Path(__file__).resolve().parents[1]
TINY_IMAGE = ["--model", "siren", "--hidden", "24", "--hidden-layers", "2", "--steps", "6", "--batch", "full",
              "--seconds", "none", "--quiet"]
TINY_AUDIO = ["--model", "lrnn-spder", "--rank", "8", "--steps", "6", "--batch", "full", "--seconds", "none",
              "--quiet"]
RUN_FILES = {"metrics.json", "config.json", "model.pt", "history.csv", "curves.png"}


def _files(folder: Path) -> set:
    return {p.name for p in folder.iterdir()}


def test_fit_image_writes_a_complete_run_and_eval_reproduces_it(tmp_path, tiny_png, capsys):
    path, truth = tiny_png
    out = tmp_path / "run"
    assert main(["fit", str(path), *TINY_IMAGE, "--out", str(out), "--target-psnr", "5,10", "--target-psnr", "60"]) == 0
    assert _files(out) == RUN_FILES | {"reconstruction.png", "error.png", "comparison.png"}
    m = json.loads((out / "metrics.json").read_text())
    for key in ("psnr", "ssim", "params", "steps", "seconds", "seconds_per_step", "time_to_target", "memory",
                "device", "versions", "seed", "config"):
        assert key in m, key
    assert m["steps"] == 6 and m["seed"] == 0 and set(m["time_to_target"]) == {"5.0", "10.0", "60.0"}
    assert m["time_to_target"]["60.0"] is None
    assert m["memory"]["saved_tensors_bytes"] > 0 and m["memory"]["peak_rss_bytes"] > 0

    # The recorded PSNR / SSIM against scikit-image on the written 8-bit PNG (within 8-bit rounding) ...
    with Image.open(out / "reconstruction.png") as im:
        rec = np.asarray(im) / 255.0
    t = truth / 255.0
    assert rec.shape == truth.shape
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(t, rec, data_range=1.0), abs=0.05)
    assert m["ssim"] == pytest.approx(structural_similarity(t, rec, data_range=1.0), abs=0.01)
    # ... and exactly on the float prediction of the model reloaded from the run folder.
    net, config = fitting.load_run(out)
    sig = load(path)
    pred = fitting.predict(net, sig.coords(), "image").numpy().reshape(truth.shape)
    assert m["psnr"] == pytest.approx(peak_signal_noise_ratio(t, np.clip(pred, 0, 1), data_range=1.0), abs=1e-9)
    # save/load: the reloaded model writes exactly the reconstruction written at fit time
    sig.write(pred.reshape(-1, 1), tmp_path / "again.png")
    with Image.open(tmp_path / "again.png") as im:
        np.testing.assert_array_equal(np.asarray(im) / 255.0, rec)
    assert config["model"]["hidden"] == 24 and config["model"]["hidden_layers"] == 2
    assert config["signal"]["source"] == str(path.resolve())

    capsys.readouterr()
    before = sorted(p.name for p in out.iterdir())
    assert main(["eval", str(out), "--out", str(tmp_path / "eval.json")]) == 0
    assert "PSNR" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == before   # the run folder is never written into
    assert main(["eval", str(out), "--out", str(tmp_path / "eval.json")]) == 2   # an existing file: refused
    ev = json.loads((tmp_path / "eval.json").read_text())
    assert ev["psnr"] == pytest.approx(m["psnr"], abs=1e-9) and ev["ssim"] == pytest.approx(m["ssim"], abs=1e-9)
    history = (out / "history.csv").read_text().splitlines()
    # 6 training rows + the whole-signal evaluation after the last step (eval_every 50 > 6 steps)
    assert history[0].startswith("step,seconds,loss,lr,psnr,eval_psnr,eval_mse") and len(history) == 8
    last = dict(zip(history[0].split(","), history[-1].split(",")))
    assert last["step"] == "6" and float(last["eval_psnr"]) == pytest.approx(m["psnr"], abs=1e-4)
    assert m["evaluations"] == 1 and m["eval_seconds"] >= 0 and set(m["time_to_target_batch"]) == {"5.0", "10.0", "60.0"}


def test_fit_audio(tmp_path, tiny_wav):
    path, ints = tiny_wav
    out = tmp_path / "arun"
    assert main(["fit", str(path), *TINY_AUDIO, "--out", str(out), "--target-mse", "10"]) == 0
    assert _files(out) == RUN_FILES | {"reconstruction.wav"}
    m = json.loads((out / "metrics.json").read_text())
    assert {"mse", "rho_ag"} <= set(m) and "psnr" not in m
    assert m["time_to_target_batch"]["10.0"]["step"] == 1  # the first batch MSE is far below 10
    assert m["time_to_target"]["10.0"]["step"] == 6  # whole-signal evaluation: only after the last step here
    config = json.loads((out / "config.json").read_text())
    assert config["model"]["activation"] == "spder-atan" and config["model"]["w0_first"] == 1000
    info = sf.info(out / "reconstruction.wav")
    assert (info.samplerate, info.channels, info.subtype, info.frames) == (8000, 1, "PCM_16", len(ints))

    truth = ints / np.abs(ints).max()
    net, _ = fitting.load_run(out)
    pred = fitting.predict(net, load(path).coords(), "audio").numpy()[:, 0]
    # MSE and rho_AG against numpy references (rho_AG: cosine of the full-FFT magnitudes' positive half)
    assert m["mse"] == pytest.approx(np.mean((pred - truth) ** 2), abs=1e-12)
    P, T = np.abs(np.fft.fft(pred))[: len(pred) // 2 + 1], np.abs(np.fft.fft(truth))[: len(pred) // 2 + 1]
    assert m["rho_ag"] == pytest.approx(P @ T / np.linalg.norm(P) / np.linalg.norm(T), abs=1e-9)
    # the written WAV is the prediction at the input scale (16-bit rounding, clipped to full scale)
    rec, _ = sf.read(out / "reconstruction.wav", dtype="float64")
    want = np.clip(pred * np.abs(ints).max() / 32768.0, -1, 1)
    np.testing.assert_allclose(rec, want, atol=1.01 / 32768)
    ev = fitting.evaluate_run(out)
    assert ev["mse"] == pytest.approx(m["mse"], abs=1e-15) and ev["rho_ag"] == pytest.approx(m["rho_ag"], abs=1e-12)


def test_fit_stereo_float_wav_mse_matches_the_written_file(tmp_path):
    t = np.arange(300) / 11025
    x = np.stack([0.4 * np.sin(2 * np.pi * 300 * t), 0.2 * np.cos(2 * np.pi * 700 * t)], -1).astype(np.float32)
    sf.write(tmp_path / "s.wav", x, 11025, subtype="FLOAT")
    out = tmp_path / "srun"
    assert main(["fit", str(tmp_path / "s.wav"), "--model", "siren", "--hidden", "16", "--steps", "4", "--quiet",
                 "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    rec, rate = sf.read(out / "reconstruction.wav", dtype="float64", always_2d=True)
    assert rate == 11025 and rec.shape == (300, 2) and sf.info(out / "reconstruction.wav").subtype == "FLOAT"
    peak = np.abs(x.astype(np.float64)).max()
    assert m["mse"] == pytest.approx(np.mean((rec / peak - x / peak) ** 2), rel=1e-5)


def test_rgba_16bit_png_fit_writes_16bit_rgba(tmp_path):
    a = smooth_image(12, 20, channels=4, dtype=np.uint16)
    src = image_from_array(a)
    src.write(src.values, tmp_path / "c.png")
    out = tmp_path / "crun"
    assert main(["fit", str(tmp_path / "c.png"), *TINY_IMAGE, "--out", str(out)]) == 0
    rec = load(out / "reconstruction.png")
    assert rec.bit_depth == 16 and rec.shape == (12, 20) and rec.channels == 4
    m = json.loads((out / "metrics.json").read_text())
    ref = peak_signal_noise_ratio(a / 65535.0, rec.values, data_range=1.0)
    assert m["psnr"] == pytest.approx(ref, abs=0.01)
    ssim = structural_similarity(a / 65535.0, rec.values, data_range=1.0, channel_axis=2)
    assert m["ssim"] == pytest.approx(ssim, abs=1e-3)


def test_model_options_and_set(tmp_path, tiny_png):
    out = tmp_path / "lr"
    argv = ["fit", str(tiny_png[0]), "--model", "lrnn-siren", "--rank", "6", "--dbar", "3", "--width", "2",
            "--set", "shared=true", "--steps", "2", "--batch", "64", "--quiet", "--out", str(out), "--lr", "0.002"]
    assert main(argv) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert {k: cfg["model"][k] for k in ("rank", "dbar", "width", "shared")} == {"rank": 6, "dbar": 3, "width": 2,
                                                                                 "shared": True}
    assert cfg["fit"]["train"]["lr"] == 0.002 and cfg["fit"]["batch"] == 64


def test_params_budget_picks_the_width(tmp_path, tiny_png):
    m = fit_and_save(tiny_png[0], model="siren", params=3000, steps=1, out=tmp_path / "b", quiet=True)
    assert abs(m["params"] - 3000) < 300


def test_eval_refuses_a_changed_source_or_a_corrupt_run(tmp_path, tiny_png, capsys):
    path, a = tiny_png
    out = tmp_path / "r"
    fit_and_save(path, model="siren", model_options={"hidden": 8}, steps=1, out=out, quiet=True)
    Image.fromarray(255 - a).save(path)
    assert main(["eval", str(out)]) == 2 and "has changed" in capsys.readouterr().err
    Image.fromarray(a).save(path)
    assert main(["eval", str(out)]) == 0
    (out / "model.pt").write_bytes(b"garbage")
    assert main(["eval", str(out)]) == 2 and "corrupt run folder" in capsys.readouterr().err


def test_ctrl_c_leaves_no_folder(tmp_path, tiny_png, interrupt_fit_at, capsys):
    interrupt_fit_at(2)
    out = tmp_path / "runs" / "x"
    assert main(["fit", str(tiny_png[0]), *TINY_IMAGE, "--out", str(out)]) == 130
    assert not out.exists() and os.listdir(tmp_path / "runs") == []
    assert "interrupted" in capsys.readouterr().err


def test_resume_after_interrupt_matches_an_uninterrupted_run(tmp_path, tiny_png, interrupt_fit_at):
    base = ["fit", str(tiny_png[0]), "--model", "siren", "--hidden", "16", "--steps", "6", "--batch", "50",
            "--seconds", "none", "--quiet"]
    assert main([*base, "--out", str(tmp_path / "straight")]) == 0
    interrupt_fit_at(5)
    out = tmp_path / "resumed"
    assert main([*base, "--out", str(out), "--checkpoint-every", "2"]) == 130
    assert not out.exists() and (tmp_path / ".resumed.partial" / "checkpoint.pt").exists()
    assert main([*base, "--out", str(out), "--checkpoint-every", "2", "--resume"]) == 0
    assert not (tmp_path / ".resumed.partial").exists() and "checkpoint.pt" not in _files(out)
    a = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    b = torch.load(out / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _bad_cases(tmp_path, tiny_png):
    png = str(tiny_png[0])
    (tmp_path / "text.png").write_text("not an image")
    (tmp_path / "text.wav").write_text("not audio")
    sf.write(tmp_path / "empty.wav", np.zeros((0, 1)), 8000)
    Image.fromarray(np.zeros((1, 1), np.uint8)).save(tmp_path / "one.png")
    cut = tiny_png[0].read_bytes()
    (tmp_path / "cut.png").write_bytes(cut[: len(cut) // 2])
    (tmp_path / "afile").write_text("x")
    (tmp_path / "exists").mkdir()
    return {
        "missing": ["fit", str(tmp_path / "nope.png")],
        "not an image": ["fit", str(tmp_path / "text.png")],
        "not audio": ["fit", str(tmp_path / "text.wav")],
        "corrupt": ["fit", str(tmp_path / "cut.png")],
        "empty audio": ["fit", str(tmp_path / "empty.wav")],
        "1x1": ["fit", str(tmp_path / "one.png")],
        "unknown model": ["fit", png, "--model", "nope"],
        "steps 0": ["fit", png, "--steps", "0"],
        "steps -3": ["fit", png, "--steps", "-3"],
        "bad lr": ["fit", png, "--lr", "-1"],
        "bad --set": ["fit", png, "--set", "nokey"],
        "unknown --set key": ["fit", png, "--model", "siren", "--set", "bogus=1", "--steps", "1"],
        "out under a file": ["fit", png, "--out", str(tmp_path / "afile" / "run")],
        "out exists": ["fit", png, "--out", str(tmp_path / "exists")],
        "resume without out": ["fit", png, "--resume"],
        "bad device": ["fit", png, "--device", "tpu"],
        "seconds 0": ["fit", png, "--seconds", "0"],
        "bad threads": ["fit", png, "--threads", "0"],
        "no command": [],
        "eval missing": ["eval", str(tmp_path / "nothing")],
        "eval not a run": ["eval", str(tmp_path / "exists")],
    }


def test_bad_inputs_exit_2_with_one_line_and_no_folder(tmp_path, tiny_png, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the default --out (runs/...) would land here
    cases = _bad_cases(tmp_path, tiny_png)
    before = sorted(os.listdir(tmp_path))
    for name, argv in cases.items():
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2, name
        assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, (name, err)
        assert sorted(os.listdir(tmp_path)) == before, name
    assert not (tmp_path / "runs").exists()


@pytest.mark.skipif(os.geteuid() == 0, reason="root can write into read-only folders")
def test_read_only_out_folder(tmp_path, tiny_png, capsys):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        assert main(["fit", str(tiny_png[0]), "--out", str(ro / "run")]) == 2
        assert "not writable" in capsys.readouterr().err and os.listdir(ro) == []
    finally:
        ro.chmod(0o755)


def test_console_entry_in_a_subprocess(tmp_path, tiny_png):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    argv = [a for a in TINY_IMAGE if a != "--quiet"]
    r = subprocess.run([sys.executable, "-m", "inr", "fit", str(tiny_png[0]), *argv, "--steps", "2", "--threads", "1",
                        "--out", str(tmp_path / "sub")], env=env, capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert "PSNR" in r.stdout and f"run folder: {tmp_path / 'sub'}" in r.stdout
    assert (tmp_path / "sub" / "metrics.json").exists()
