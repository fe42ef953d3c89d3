"""The image and audio fitting benchmarks run end to end at their tiny settings."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("script,plot", [("image_fit.py", "psnr_vs_time.png"), ("audio_fit.py", "mse_vs_time.png")])
def test_benchmark_quick(script, plot, tmp_path):
    out = tmp_path / "res"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "metrics.json").read_text())["summary"]
    assert [r["model"] for r in summary] == ["siren", "lrnn-spder"]
    for row in summary:
        assert row["runs"] == 1 and row["failed"] == 0 and row["s_per_step"] > 0
    assert (out / "table.md").read_text().count("\n|") >= 3
    assert (out / plot).stat().st_size > 0


def test_lrnn_cost_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lrnn_cost.py"), "--quick", "--threads", "1",
                           "--no-compiled",
                           "--out", str(tmp_path / "out")], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads((tmp_path / "out" / "metrics.json").read_text())["rows"]}
    # the fused LRNN path must save less than plain autograd on the same model (independent of timing noise)
    default = next(k for k in rows if k.startswith("lrnn-spder (default"))
    assert rows[default]["saved_MB"] < rows["lrnn-spder (harmonic K=4, plain autograd)"]["saved_MB"]
    for fused, plain in (("harmonic K=4, fused eager", "harmonic K=4, plain autograd"),
                         ("paper MLP m=4, depth 2, fused", "paper MLP, plain autograd")):
        assert rows[f"lrnn-spder ({fused})"]["saved_MB"] < rows[f"lrnn-spder ({plain})"]["saved_MB"]
    assert rows["siren"]["x_siren_time"] == 1.0


def test_batched_step_quick(tmp_path):
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batched_step.py"), "--quick",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((out / "metrics.json").read_text())["rows"]
    assert set(row["ms_per_step"]) == {"sequential", "stacked", "loop"}
    assert all(v > 0 for v in row["ms_per_step"].values())
    assert row["speedup_vs_sequential"]["sequential"] == 1.0
    assert (out / "table.md").read_text().count("\n|") == 3
    # an existing result folder is refused before any work
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batched_step.py"), "--quick",
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_lrnn_study_quick(tmp_path):
    out = tmp_path / "study"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "lrnn_study.py"), "--quick", "--part", "images",
                           "--mode", "steps", "--threads", "1", "--out", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "images_steps" / "metrics.json").read_text())
    assert [r["model"] for r in m["summary"]] == ["siren", "lrnn-spder"]
    for run in m["runs"]:
        assert "error" not in run and run["steps"] == 6
        # whole-image evaluations every 3 steps and at the end, and the final PSNR is the last of them
        assert [c[0] for c in run["curve"]] == [3, 6]
        assert abs(run["curve"][-1][2] - run["psnr"]) < 1e-6
    assert (out / "images_steps" / "psnr_curves.png").stat().st_size > 0


def test_music_clip_is_deterministic_and_normalised(monkeypatch):
    # the benchmarks folder holds classify.py: keep it off sys.path after this test (the package wins)
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks")] + sys.path)
    import numpy as np
    from lrnn_study import music_clip, parse_model
    a, b = music_clip(0.5, 8000), music_clip(0.5, 8000)
    assert a.shape == (4000,) and np.array_equal(a, b) and abs(np.abs(a).max() - 1) < 1e-12
    spec = np.abs(np.fft.rfft(a))
    f = np.fft.rfftfreq(len(a), 1 / 8000)
    assert f[spec.argmax()] > 60  # energy at the notes, not at DC
    assert parse_model("lrnn-spder[harmonics=1,band=projection]") == ("lrnn-spder", {"harmonics": 1, "band": "projection"})


def _load_benchmark(name):
    import importlib.util
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_benchmark_builds_under_a_hidden_name_and_leaves_nothing_on_failure(tmp_path, monkeypatch):
    from inr.runs import staging_dir
    mod = _load_benchmark("batched_step")
    out = tmp_path / "bs"
    real, seen = mod.measure, []

    def spy(*args, **kw):   # while the study works, only the hidden staging folder exists
        seen.append((out.exists(), staging_dir(out).is_dir()))
        return real(*args, **kw)

    monkeypatch.setattr(mod, "measure", spy)
    assert mod.main(["--quick", "--out", str(out)]) == 0
    assert seen == [(False, True)]
    assert (out / "metrics.json").is_file() and not staging_dir(out).exists()

    def boom(*args, **kw):
        raise RuntimeError("interrupted")

    monkeypatch.setattr(mod, "measure", boom)
    failed = tmp_path / "failed"
    with pytest.raises(RuntimeError):
        mod.main(["--quick", "--out", str(failed)])
    assert not failed.exists() and not staging_dir(failed).exists()   # no complete-looking folder


def test_gpu_protocols_quick(tmp_path):
    """The GPU protocol script's tiny CPU setting: every section runs and lands in one table."""
    out = tmp_path / "gpu"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_protocols.py"), "--quick", "--threads", "1",
                           "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert not [r for r in rows if "skipped" in r]
    by = {}
    for r in rows:
        by.setdefault(r["section"], {})[r["item"]] = r
    assert set(by["audio"]) == {f"{c} / {m}" for c in ("test_audio", "music") for m in ("siren", "lrnn-spder")}
    # finite whole-clip MSEs on the [-1, 1] scale after exactly the 30 steps asked for
    assert all(0 < r["mse"] < 0.5 and r["steps"] == 30 for r in by["audio"].values())
    assert set(by["ct"]) == {"lrnn-siren", "siren", "hash"}
    assert all(r["steps"] == 20 and 5 < r["value"] < 60 and -1 <= r["ssim"] <= 1 for r in by["ct"].values())
    assert set(by["classify"]) == {"resnet20", "pure20"} and all(r["value"] > 0 for r in by["classify"].values())
    assert by["kernel"]["siren"]["x_siren"] == 1.0 and by["kernel"]["lrnn-spder (auto)"]["value"] > 0
    table = (out / "table.md").read_text()
    assert table.count("\n|") == 2 + len(rows)
    # an existing result folder is refused before any work
    again = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_protocols.py"), "--quick",
                            "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert again.returncode != 0 and "already exists" in again.stderr


def test_scale_quick(tmp_path):
    out = tmp_path / "scale"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "scale.py"), "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    rows = json.loads((out / "metrics.json").read_text())["rows"]
    assert [r["kind"] for r in rows] == ["image", "audio"]
    for r in rows:
        assert "error" not in r and r["train_s"] > 0 and r["wall_s"] > r["train_s"] and r["peak_rss_MB"] > 0
    assert (out / "table.md").read_text().count("\n|") >= 3
    assert (out / "fits" / "mosaic32" / "reconstruction.png").is_file()
    assert (out / "fits" / "music0.05s" / "reconstruction.wav").is_file()


def test_audio_devtest_quick(tmp_path):
    """The dev/test audio protocol's tiny setting: equal steps on a test clip and equal wall time, one table."""
    out = tmp_path / "adt"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "audio_devtest.py"), "--quick", "--threads", "1",
                           "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    m = json.loads((out / "metrics.json").read_text())
    steps = m["runs"]["test_steps"]
    assert [(r["model"], r["clip"]) for r in steps] == [("siren", "music-s11"), ("lrnn-spder", "music-s11")]
    assert all("error" not in r and r["steps"] == 4 and r["batch"] is None and 0 < r["mse"] < 1 for r in steps)
    assert all(r["seconds"] >= 1.0 and r["steps"] > 4 for r in m["runs"]["wall"])
    assert (out / "clips" / "music-s11.wav").is_file()
    assert (out / "table.md").read_text().count("| lrnn-spder |") == 2


def test_audio_devtest_model_at_lr(monkeypatch):
    """``MODEL@LR`` rows in --models: the rate travels with the row, options with commas stay whole."""
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks")] + sys.path)
    import audio_devtest
    import lrnn_study
    from inr.models import spec

    text = "siren,siren@3e-4,lrnn-spder[w0_first=1000,band=component]@3e-3,lrnn-spder[w0_first=300]"
    assert lrnn_study.split_models(text) == ["siren", "siren@3e-4", "lrnn-spder[w0_first=1000,band=component]@3e-3",
                                             "lrnn-spder[w0_first=300]"]
    assert audio_devtest.model_lr("siren@3e-4", {}) == ("siren", 3e-4)
    assert audio_devtest.model_lr("lrnn-spder[w0_first=1000]@3e-3", {"lrnn-spder": 1.0}) == (
        "lrnn-spder[w0_first=1000]", 3e-3)
    assert audio_devtest.model_lr("lrnn-spder[w0_first=300]", {"lrnn-spder": 2e-3}) == ("lrnn-spder[w0_first=300]", 2e-3)
    assert audio_devtest.model_lr("siren", {}) == ("siren", spec("siren").task("audio").lr)


def test_audio_clips_are_seeded_and_normalised(monkeypatch):
    monkeypatch.setattr(sys, "path", [str(ROOT / "benchmarks")] + sys.path)
    import numpy as np
    from audio_clips import SETS, excerpt, music
    a, b, c = music(0.5, 8000, 3), music(0.5, 8000, 3), music(0.5, 8000, 4)
    assert a.shape == (4000,) and np.array_equal(a, b) and not np.allclose(a, c)
    x = np.r_[np.zeros(100), np.sin(np.arange(900) / 5.0) * 3]
    e = excerpt(x, 0.1, 1000)   # starts past the leading silence, peak 1
    assert e.shape == (100,) and abs(np.abs(e).max() - 1) < 1e-12 and abs(e[0]) < 0.2 and e[1] != 0
    dev, test = ({r["name"] for r in SETS[k]} for k in ("dev", "test"))
    assert dev and test and not dev & test
