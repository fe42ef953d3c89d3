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
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    rows = {r["model"]: r for r in json.loads((tmp_path / "metrics.json").read_text())["rows"]}
    # the fused LRNN path must save less than plain autograd on the same model (independent of timing noise)
    assert rows["lrnn-spder (fused)"]["saved_MB"] < rows["lrnn-spder (plain autograd)"]["saved_MB"]
    assert rows["siren"]["x_siren_time"] == 1.0


def test_batched_step_quick(tmp_path):
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "batched_step.py"), "--quick",
                           "--out", str(tmp_path)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    (row,) = json.loads((tmp_path / "metrics.json").read_text())["rows"]
    assert set(row["ms_per_step"]) == {"sequential", "stacked", "loop"}
    assert all(v > 0 for v in row["ms_per_step"].values())
    assert row["speedup_vs_sequential"]["sequential"] == 1.0
    assert (tmp_path / "table.md").read_text().count("\n|") == 3
