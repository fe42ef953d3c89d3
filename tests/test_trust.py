"""Trustworthy runs: hostile files, bad numbers, existing folders and diverging fits give a one-line error
(exit code 2, no traceback) and never a complete-looking run folder; nothing in a file runs code."""
from __future__ import annotations

import io
import json
import math
import os
import pickle
import struct
import subprocess
import sys
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch

from inr.cli import main as inr_main
from inr.runs import MARKER

pytestmark = pytest.mark.usefixtures("torch_one_thread")
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
       "OMP_NUM_THREADS": "1"}
TINY = ["--model", "siren", "--hidden", "8", "--hidden-layers", "1", "--steps", "4", "--batch", "full",
        "--seconds", "none", "--quiet", "--threads", "1"]


def run_tool(tool: str, *argv, cwd=None, timeout=60) -> subprocess.CompletedProcess:
    """``python -m TOOL ARGV`` in a fresh process (real exit code and stderr)."""
    return subprocess.run([sys.executable, "-m", tool, *map(str, argv)], capture_output=True, text=True, env=ENV,
                          cwd=cwd or ROOT, timeout=timeout)


def assert_clean_error(code: int, err: str, *needles) -> None:
    assert code == 2, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err
    for n in needles:
        assert n in err, (n, err)


class Payload:
    """Unpickling this runs ``open(marker, 'w')``: a stand-in for arbitrary code in a hostile file."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


# ----------------------------------------------------------------------------- 1. checkpoints
def test_resume_refuses_a_checkpoint_that_runs_code(tmp_path, tiny_png):
    out, marker = tmp_path / "run", tmp_path / "PWNED"
    stage = tmp_path / ".run.partial"
    stage.mkdir()
    (stage / MARKER).write_text("")   # looks like the toolkit's own staging folder: the checkpoint is read
    torch.save({"model": Payload(marker), "step": 1}, stage / "checkpoint.pt")
    r = run_tool("inr", "fit", tiny_png[0], *TINY, "--out", out, "--resume", "--checkpoint-every", "2")
    assert not marker.exists()
    assert_clean_error(r.returncode, r.stderr, "checkpoint")
    assert not out.exists()


def test_checkpoint_holds_only_plain_values(tmp_path):
    from inr.train import TrainConfig, fit

    torch.manual_seed(0)
    model = torch.nn.Linear(2, 1)
    x = torch.randn(16, 2)
    ck = tmp_path / "ck.pt"
    fit(model, lambda s: model(x).square().mean(), TrainConfig(steps=2, quiet=True, checkpoint_every=1,
                                                                checkpoint_path=str(ck)))
    state = torch.load(ck, weights_only=True)  # would raise on numpy arrays or other objects
    assert state["step"] == 2 and "rng" in state


def test_resume_refuses_another_signal_and_a_truncated_checkpoint(tmp_path, tiny_png, monkeypatch, interrupt_fit_at, capsys):
    from PIL import Image

    from conftest import smooth_image

    other = tmp_path / "other.png"
    Image.fromarray(smooth_image(32, 32, seed=5)).save(other)
    out = tmp_path / "run"
    interrupt_fit_at(3)
    assert inr_main(["fit", str(tiny_png[0]), *TINY, "--out", str(out), "--checkpoint-every", "2"]) == 130
    ck = tmp_path / ".run.partial" / "checkpoint.pt"
    assert ck.exists()
    capsys.readouterr()
    code = inr_main(["fit", str(other), *TINY, "--out", str(out), "--checkpoint-every", "2", "--resume"])
    assert_clean_error(code, capsys.readouterr().err, "another run")
    code = inr_main(["fit", str(tiny_png[0]), *TINY, "--hidden", "9", "--out", str(out), "--checkpoint-every", "2",
                     "--resume"])
    assert_clean_error(code, capsys.readouterr().err, "another run")
    assert not out.exists() and ck.exists()
    ck.write_bytes(ck.read_bytes()[:200])
    code = inr_main(["fit", str(tiny_png[0]), *TINY, "--out", str(out), "--checkpoint-every", "2", "--resume"])
    assert_clean_error(code, capsys.readouterr().err, "corrupt")
    assert not out.exists()


def test_resume_at_or_past_the_last_step_writes_valid_json(tmp_path, tiny_png, monkeypatch, interrupt_fit_at, capsys):
    out = tmp_path / "run"
    interrupt_fit_at(3)
    base = ["fit", str(tiny_png[0]), *TINY, "--out", str(out), "--checkpoint-every", "2"]
    assert inr_main(base) == 130
    assert inr_main([*base, "--resume", "--steps", "2"]) == 0
    text = (out / "metrics.json").read_text()
    m = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c} in metrics.json"))
    assert m["steps"] == 2 and m["final_loss"] is not None and math.isfinite(m["final_loss"])


def test_write_json_never_writes_bare_nan(tmp_path):
    from inr.runfiles import write_json

    write_json({"a": float("nan"), "b": [np.float32("inf"), 1.5], "c": np.float64(-np.inf)}, tmp_path / "x.json")
    assert json.loads((tmp_path / "x.json").read_text()) == {"a": None, "b": [None, 1.5], "c": None}


# ----------------------------------------------------------------------------- 7, 9, 10: numbers and divergence
@pytest.mark.parametrize("argv, needle", [
    (["--lr", "inf"], "--lr"), (["--lr", "nan"], "--lr"), (["--hidden", "0"], "--hidden"),
    (["--w0", "nan"], "--w0"), (["--params", "100000000000"], "--params"), (["--seconds", "nan"], "--seconds"),
    (["--target-psnr", "nan"], "--target-psnr"),
])
def test_fit_rejects_bad_numbers_up_front(tmp_path, tiny_png, capsys, argv, needle):
    out = tmp_path / "run"
    code = inr_main(["fit", str(tiny_png[0]), *TINY, *argv, "--out", str(out)])
    assert_clean_error(code, capsys.readouterr().err, needle)
    assert sorted(os.listdir(tmp_path)) == ["tiny.png"]


def test_params_below_the_smallest_model_is_an_error(tmp_path, tiny_png, capsys):
    code = inr_main(["fit", str(tiny_png[0]), "--model", "siren", "--params", "3", "--steps", "1", "--quiet",
                     "--out", str(tmp_path / "run")])
    assert_clean_error(code, capsys.readouterr().err, "smallest")
    assert not (tmp_path / "run").exists()


def test_fit_bad_number_in_a_subprocess(tmp_path, tiny_png):
    r = run_tool("inr", "fit", tiny_png[0], *TINY, "--lr", "inf", "--out", tmp_path / "run")
    assert_clean_error(r.returncode, r.stderr, "--lr")
    assert not (tmp_path / "run").exists()


def _problem():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(1, 8), torch.nn.Tanh(), torch.nn.Linear(8, 1))
    x = torch.linspace(-1, 1, 32)[:, None]
    return model, lambda s: (model(x) - torch.sin(3 * x)).square().mean()


def test_guard_reacts_to_a_loss_blow_up_and_records_it_in_the_history(tmp_path):
    from inr.train import TrainConfig, fit

    model, loss_fn = _problem()
    spike = {15}

    def spiky(step):
        loss = loss_fn(step)
        if step in spike:
            spike.clear()
            return loss * 1e6   # finite, but a million times the loss so far
        return loss
    r = fit(model, spiky, TrainConfig(steps=20, lr=1e-2, guard_every=5, quiet=True))
    assert len(r.events) == 1 and "blow-up" in r.events[0]["event"] and r.events[0]["lr_scale"] == 0.5
    assert r.steps == 20
    r.write_history(tmp_path / "h.csv")
    rows = (tmp_path / "h.csv").read_text().splitlines()
    assert "event" in rows[0].split(",") and any("blow-up" in row for row in rows[1:])


def test_non_finite_parameters_after_the_last_update_are_not_kept():
    from inr.train import TrainConfig, fit

    model, loss_fn = _problem()

    def poison(step):
        if step == 9:   # the very last update leaves NaN weights (its loss was finite)
            with torch.no_grad():
                model[0].weight.fill_(float("nan"))
    r = fit(model, loss_fn, TrainConfig(steps=10, lr=1e-2, guard_every=2, quiet=True), post_step=poison)
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert r.events and "non-finite parameters" in r.events[-1]["event"]
    assert math.isfinite(r.final_loss) and r.final_loss == pytest.approx(float(loss_fn(0).detach()))


def test_final_loss_is_the_loss_after_the_last_update():
    from inr.train import TrainConfig, fit

    model, loss_fn = _problem()
    r = fit(model, loss_fn, TrainConfig(steps=5, lr=1e-2, quiet=True))
    assert r.final_loss == pytest.approx(float(loss_fn(0).detach()))          # the final parameters' loss
    assert r.last_step_loss == pytest.approx(r.history[-1]["loss"])   # the last step's (pre-update) loss
    assert r.final_loss < r.last_step_loss


def test_eval_with_a_null_psnr_does_not_crash(tmp_path, tiny_png, capsys):
    out = tmp_path / "run"
    assert inr_main(["fit", str(tiny_png[0]), *TINY, "--out", str(out)]) == 0
    m = json.loads((out / "metrics.json").read_text())
    m["psnr"] = None
    (out / "metrics.json").write_text(json.dumps(m))
    capsys.readouterr()
    assert inr_main(["eval", str(out), "--device", "cpu"]) == 0
    assert "n/a" in capsys.readouterr().out


# ----------------------------------------------------------------------------- 5, 10, 12: tomography
def test_tomography_never_touches_an_existing_out(tmp_path):
    out = tmp_path / "old"
    out.mkdir()
    (out / "metrics.json").write_text('{"precious": true}')
    t0 = time.perf_counter()
    r = run_tool("tomography", "recon", "--phantom", "--size", "16", "--views", "8", "--steps", "2000",
                 "--out", out)
    assert_clean_error(r.returncode, r.stderr, "already exists")
    assert time.perf_counter() - t0 < 30   # refused before any reconstruction
    assert (out / "metrics.json").read_text() == '{"precious": true}' and os.listdir(out) == ["metrics.json"]
    assert sorted(os.listdir(tmp_path)) == ["old"]


@pytest.mark.parametrize("size", ["2", "6", "6x32"])
def test_tomography_rejects_tiny_sizes(tmp_path, capsys, size):
    from tomography.cli import main as ct_main

    code = ct_main(["recon", "--phantom", "--size", size, "--out", str(tmp_path / "r")])
    assert_clean_error(code, capsys.readouterr().err, "--size")
    assert not (tmp_path / "r").exists()


def test_tomography_reads_images_through_inr_signals_keeping_16_bit(tmp_path):
    from PIL import Image

    from tomography.recon import load_image

    a = (np.arange(64 * 64, dtype=np.uint16).reshape(64, 64) * 3)   # 0 .. 12285: < 256 levels of 8 bits
    Image.fromarray(a).save(tmp_path / "ct16.png")
    img = load_image(tmp_path / "ct16.png")
    np.testing.assert_allclose(img, a / 65535.0)   # 16-bit depth kept, scaled by the format maximum
    assert len(np.unique(img)) == a.size


# ----------------------------------------------------------------------------- 6, 10: pde
PDE_TINY = ["solve", "--problem", "multiscale1d", "--model", "siren", "--params", "300", "--steps", "40",
            "--points", "32", "--eval-res", "101", "--quiet", "--threads", "1"]


def test_pde_refuses_an_existing_out_before_solving(tmp_path, capsys):
    from pde.__main__ import main as pde_main

    out = tmp_path / "old"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    t0 = time.perf_counter()
    code = pde_main([*PDE_TINY, "--steps", "100000", "--out", str(out)])
    assert_clean_error(code, capsys.readouterr().err, "already exists")
    assert time.perf_counter() - t0 < 5 and os.listdir(out) == ["notes.txt"]


def test_pde_divergence_is_a_clean_error_without_a_folder(tmp_path):
    r = run_tool("pde", *PDE_TINY, "--lr", "1e30", "--out", tmp_path / "run")
    assert_clean_error(r.returncode, r.stderr, "diverged")
    assert os.listdir(tmp_path) == []


def test_pde_rejects_a_non_finite_learning_rate(tmp_path, capsys):
    from pde.__main__ import main as pde_main

    code = pde_main([*PDE_TINY, "--lr", "inf", "--out", str(tmp_path / "run")])
    assert_clean_error(code, capsys.readouterr().err, "--lr")
    assert os.listdir(tmp_path) == []


# ----------------------------------------------------------------------------- 2, 6, 10: classify
class CifarPayload:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_cifar_batch_with_a_code_payload_is_refused(tmp_path):
    from classify import data as D

    marker = tmp_path / "PWNED"
    root = tmp_path / "cifar"
    root.mkdir()
    x = np.zeros((2, 3072), np.uint8)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": x, b"labels": [0, 1], b"evil": CifarPayload(marker)}, f)
    with pytest.raises(D.DataError, match="refusing to load") as e:
        D.load(f"cifar10:{root}")
    assert not marker.exists() and "\n" not in str(e.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_cifar_batches_of_every_pickle_protocol_still_load(tmp_path, protocol):
    from classify import data as D

    root = tmp_path / "cifar"
    root.mkdir()
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        with open(root / name, "wb") as f:
            pickle.dump({b"data": rng.integers(0, 256, (3, 3072), dtype=np.uint8), b"labels": [0, 1, 9],
                         b"batch_label": name.encode(), b"n": np.int64(3)}, f, protocol=protocol)
    with open(root / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)]}, f, protocol=protocol)
    b = D.load(f"cifar10:{root}")
    assert len(b.train) == 15 and b.classes[9] == "c9"


CLS_TINY = ["train", "--model", "resnet20", "--model-arg", "base_width=4", "--epochs", "1", "--batch-size", "16",
            "--limit-train", "32", "--limit-test", "16", "--image-size", "8", "--threads", "1", "--quiet",
            "--device", "cpu"]


def test_classify_refuses_an_existing_out_up_front(tmp_path, capsys):
    from classify.cli import main as cls_main

    out = tmp_path / "old"
    out.mkdir()
    (out / "metrics.json").write_text("{}")
    code = cls_main([*CLS_TINY, "--epochs", "500", "--out", str(out)])
    assert_clean_error(code, capsys.readouterr().err, "already exists")
    assert os.listdir(out) == ["metrics.json"] and (out / "metrics.json").read_text() == "{}"


def test_classify_eval_of_a_corrupt_model_is_a_clean_error(tmp_path):
    from classify.cli import main as cls_main

    out = tmp_path / "run"
    assert cls_main([*CLS_TINY, "--out", str(out)]) == 0
    assert sorted(os.listdir(tmp_path)) == ["run"]   # no staging folder left behind
    data = (out / "model.pt").read_bytes()
    (out / "model.pt").write_bytes(data[: len(data) // 3])
    r = run_tool("classify", "eval", out, "--device", "cpu")
    assert_clean_error(r.returncode, r.stderr, "model.pt")


def _image_folder(root: Path, counts: dict) -> None:
    from PIL import Image

    for c, n in counts.items():
        (root / c).mkdir(parents=True)
        for i in range(n):
            Image.fromarray(np.full((8, 8, 3), 40 * i, np.uint8)).save(root / c / f"{i}.png")


@pytest.mark.parametrize("counts, needle", [({"only": 6}, "one class"), ({"a": 6, "b": 0}, "hold no images")])
def test_classify_folder_with_one_class_or_an_empty_class_is_an_error(tmp_path, capsys, counts, needle):
    from classify.cli import main as cls_main

    _image_folder(tmp_path / "data", counts)
    code = cls_main([*CLS_TINY, "--data", f"folder:{tmp_path / 'data'}", "--out", str(tmp_path / "run")])
    assert_clean_error(code, capsys.readouterr().err, needle)
    assert not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- 4: approx
@pytest.mark.parametrize("target, needle", [("9**9**9", "exponent"), ("1e999999", "too large"),
                                            ("2^2^2^2^2", "exponent"), ("exp(1000)*x", "overflows"),
                                            ("x+" * 400 + "x", "characters")])
def test_runge_target_bounds(tmp_path, capsys, target, needle):
    from approx.cli import main as approx_main

    t0 = time.perf_counter()
    code = approx_main(["runge", "--target", target, "--quick", "--quiet", "--out", str(tmp_path / "r")])
    assert_clean_error(code, capsys.readouterr().err, needle)
    assert time.perf_counter() - t0 < 5 and not (tmp_path / "r").exists()


def test_runge_huge_power_in_a_subprocess_returns_quickly(tmp_path):
    r = run_tool("approx", "runge", "--target", "9**9**9", "--quick", "--out", tmp_path / "r", timeout=60)
    assert_clean_error(r.returncode, r.stderr, "exponent")


def test_runge_refuses_an_existing_out(tmp_path, capsys):
    from approx.cli import main as approx_main

    (tmp_path / "r").mkdir()
    code = approx_main(["runge", "--quick", "--quiet", "--out", str(tmp_path / "r")])
    assert_clean_error(code, capsys.readouterr().err, "already exists")
    assert os.listdir(tmp_path / "r") == []


# ----------------------------------------------------------------------------- 3: image size limit
def _png(w: int, h: int, depth: int, idat: bytes) -> bytes:
    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, depth, 0, 0, 0, 0))
            + chunk(b"IDAT", idat) + chunk(b"IEND", b""))


def _tiff(w: int, h: int) -> bytes:
    """A little-endian baseline TIFF header declaring a w x h 8-bit gray image (pixel data absent)."""
    entries = [(256, 4, 1, w), (257, 4, 1, h), (258, 3, 1, 8), (259, 3, 1, 1), (262, 3, 1, 1),
               (273, 4, 1, 8 + 2 + 12 * 9 + 4), (277, 3, 1, 1), (278, 4, 1, h), (279, 4, 1, w * h)]
    ifd = struct.pack("<H", len(entries)) + b"".join(struct.pack("<HHII", *e) for e in entries) + b"\0\0\0\0"
    return b"II*\x00" + struct.pack("<I", 8) + ifd + b"\0" * 64


@pytest.mark.parametrize("depth", [8, 16])
def test_huge_png_is_refused_from_its_header(tmp_path, depth):
    from inr.signals import SignalError, load

    bomb = zlib.compress(b"\0" * 1_000_000, 9)   # a fraction of the declared pixels; never decompressed
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(14000, 14000, depth, bomb))
    t0 = time.perf_counter()
    with pytest.raises(SignalError) as e:
        load(p)
    msg = str(e.value)
    assert "bomb.png" in msg and "14000x14000" in msg and "67,108,864" in msg
    assert time.perf_counter() - t0 < 2


def test_huge_tiff_is_refused_from_its_header(tmp_path):
    from inr.signals import SignalError, load

    p = tmp_path / "big.tif"
    p.write_bytes(_tiff(14000, 14000))
    with pytest.raises(SignalError, match=r"big.tif.*14000x14000.*limit"):
        load(p)


def test_pixel_limit_is_configurable(tmp_path, tiny_png, monkeypatch):
    from inr.signals import SignalError, load

    assert load(tiny_png[0]).shape == (32, 32)
    with pytest.raises(SignalError, match="limit of 1,000"):
        load(tiny_png[0], max_pixels=1000)
    monkeypatch.setenv("INR_MAX_PIXELS", "500")
    with pytest.raises(SignalError, match="limit of 500"):
        load(tiny_png[0])


def test_huge_png_on_the_command_line(tmp_path):
    p = tmp_path / "bomb.png"
    p.write_bytes(_png(14000, 14000, 16, zlib.compress(b"\0" * 100_000)))
    r = run_tool("inr", "fit", p, *TINY, "--out", tmp_path / "run")
    assert_clean_error(r.returncode, r.stderr, "14000x14000")
    assert not (tmp_path / "run").exists()
