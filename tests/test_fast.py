"""Issue "Fast on a CPU": whole-signal time to target, thread rule, schedule options, comparison.png."""
from __future__ import annotations

from conftest import fit_and_save
from inr.errors import InputError
from inr.models import spec
import csv
import json

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from conftest import smooth_image
from inr import fitting
from inr.cli import main
from inr.signals import image_from_array
from inr.train import TrainConfig, fit, resolve_threads, running_elsewhere

pytestmark = pytest.mark.usefixtures("torch_one_thread")
TINY = dict(model="siren", params=None, model_options={"hidden": 16, "hidden_layers": 1}, batch=64, seconds=None,
            quiet=True)


def _sig(h=16, w=16, c=1):
    return image_from_array(smooth_image(h, w, c) / 255.0)


def _history(run):
    with open(run / "history.csv") as f:
        return list(csv.DictReader(f))


def test_whole_signal_evaluations_time_the_targets_and_leave_training_unchanged(tmp_path):
    sig = _sig()
    m = fit_and_save(sig, steps=10, eval_every=3, target_psnr=(1.0, 99.0), out=tmp_path / "a", **TINY)
    rows = _history(tmp_path / "a")
    evals = [r for r in rows if r.get("eval_psnr")]
    assert [int(r["step"]) for r in evals] == [3, 6, 9, 10] and m["evaluations"] == 4
    assert all(r["eval_mse"] for r in evals) and m["eval_seconds"] > 0 and m["eval_every"] == 3
    # headline: the first whole-signal evaluation (step 3); batch-based: the first step
    assert m["time_to_target"]["1.0"]["step"] == 3 and m["time_to_target"]["99.0"] is None
    assert m["time_to_target_batch"]["1.0"]["step"] == 1
    assert float(evals[-1]["eval_psnr"]) == pytest.approx(m["psnr"], abs=1e-4)
    # evaluations draw no random numbers: the same weights as a run evaluating only at the end
    m0 = fit_and_save(sig, steps=10, eval_every=0, target_psnr=(1.0,), out=tmp_path / "b", **TINY)
    assert m0["evaluations"] == 1 and m0["time_to_target"]["1.0"]["step"] == 10
    a = torch.load(tmp_path / "a" / "model.pt", weights_only=True)
    b = torch.load(tmp_path / "b" / "model.pt", weights_only=True)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_evaluation_time_is_off_the_training_clock():
    net = nn.Linear(1, 1)
    x = torch.ones(4, 1)

    def slow_eval(step):
        import time
        time.sleep(0.05)
        return {"psnr": 0.0}

    r = fit(net, lambda s: ((net(x) - 1) ** 2).mean(), TrainConfig(steps=4, quiet=True), evaluate=slow_eval,
            eval_every=1)
    assert r.evaluations == 4 and r.eval_seconds >= 0.2 and r.seconds < 0.2


def test_fit_signal_rejects_bad_eval_and_schedule_options(tmp_path):
    for kw, word in (({"eval_every": -1}, "--eval-every"), ({"warmup": -2}, "--warmup"),
                     ({"schedule_by": "time"}, "time budget"), ({"schedule_by": "epochs"}, "schedule_by")):
        with pytest.raises(InputError, match=word.lstrip("-").replace("-", "_") if kw.get("warmup") else word):
            fit_and_save(_sig(), steps=2, out=tmp_path / "x", **{**TINY, **kw})
    assert not (tmp_path / "x").exists()


def _lrs(cfg):
    net = nn.Linear(1, 1)
    x = torch.ones(4, 1)
    return [h["lr"] for h in fit(net, lambda s: ((net(x) - 1) ** 2).mean(), cfg).history]


def test_schedule_by_and_warmup():
    by_steps = _lrs(TrainConfig(steps=10, seconds=1e6, lr=1.0, lr_final=0.1, schedule_by="steps", quiet=True))
    by_time = _lrs(TrainConfig(steps=10, seconds=1e6, lr=1.0, lr_final=0.1, schedule_by="time", quiet=True))
    auto = _lrs(TrainConfig(steps=10, seconds=1e6, lr=1.0, lr_final=0.1, quiet=True))
    assert by_steps[-1] == pytest.approx(0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * 0.9)))
    assert by_time[-1] == pytest.approx(1.0, abs=1e-6)      # 10 steps are ~0 % of a 1e6 s budget
    assert auto == pytest.approx(by_steps, abs=1e-6)         # auto: the larger progress (steps here)
    warm = _lrs(TrainConfig(steps=10, lr=1.0, schedule="constant", warmup=4, quiet=True))
    assert warm[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    with pytest.raises(ValueError, match="time budget"):
        TrainConfig(steps=10, schedule_by="time")


def test_cli_schedule_options_reach_the_run(tmp_path, tiny_png):
    path, _ = tiny_png
    out = tmp_path / "run"
    assert main(["fit", str(path), "--model", "siren", "--hidden", "8", "--hidden-layers", "1", "--steps", "4",
                 "--seconds", "none", "--quiet", "--warmup", "2", "--schedule-by", "steps", "--eval-every", "2",
                 "--out", str(out)]) == 0
    cfg = json.loads((out / "config.json").read_text())["fit"]
    assert (cfg["train"]["warmup"], cfg["train"]["schedule_by"], cfg["eval_every"]) == (2, "steps", 2)
    lrs = [float(r["lr"]) for r in _history(out) if r.get("lr")]
    base = spec("siren").task("image").lr
    assert lrs[0] == pytest.approx(base * 0.5)                  # half-way through the 2 warm-up steps
    assert lrs[1] == pytest.approx(base * (0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi / 4))))   # cosine by steps
    assert main(["fit", str(path), "--schedule-by", "time", "--seconds", "none", "--out", str(tmp_path / "y")]) == 2


@pytest.mark.parametrize("shape", [(16, 16, 1), (12, 30, 3), (40, 10, 4)])
def test_comparison_png_has_three_panels_and_a_colour_bar(tmp_path, shape):
    h, w, c = shape
    sig = _sig(h, w, c)
    pred = torch.from_numpy(np.clip(sig.values + 0.05, 0, 1).reshape(-1, c))
    fig = fitting.write_comparison(sig, pred, tmp_path / "comparison.png", {"psnr": 26.02, "ssim": 0.9})
    assert len(fig.axes) == 4                                   # original, reconstruction, error + colour bar
    assert [a.get_title() for a in fig.axes[:3]] == ["original", "reconstruction", "|error| (mean over channels)"]
    assert "PSNR 26.02 dB" in fig._suptitle.get_text() and "SSIM 0.9000" in fig._suptitle.get_text()
    wi, hi = fitting.comparison_size(shape)
    with Image.open(tmp_path / "comparison.png") as im:
        assert im.format == "PNG" and im.size == (round(wi * fitting.COMPARISON_DPI), round(hi * fitting.COMPARISON_DPI))


def test_comparison_png_is_in_every_image_run(tmp_path):
    m = fit_and_save(_sig(20, 24, 3), steps=2, out=tmp_path / "r", **TINY)
    with Image.open(tmp_path / "r" / "comparison.png") as im:
        assert im.size == (1300, round(fitting.comparison_size((20, 24))[1] * 100))
    assert m["psnr"] is not None


def test_threads_auto_uses_every_core_unless_others_run_now():
    assert resolve_threads(3) == 3
    assert resolve_threads("auto", cpus=8, others=0) is None          # idle (whatever the load average)
    assert resolve_threads("auto", cpus=8, others=3) == 5              # keep to the free cores
    assert resolve_threads("auto", cpus=2, others=5) == 1
    assert resolve_threads("auto", cpus=4, others=lambda: 1) == 3
    assert resolve_threads("auto", cpus=4, others=None) is None         # no reading (not Linux)
    k = running_elsewhere()
    assert k is None or k >= 0
