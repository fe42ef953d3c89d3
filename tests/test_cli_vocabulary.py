"""One flag vocabulary across the tools: --config FILE (a run's own config.json reproduces the run, flags
override it), --set KEY=VALUE, --batch, and --out defaulting to a new folder under runs/."""
from __future__ import annotations

import json

import pytest
import torch


def _same_weights(a, b):
    x, y = torch.load(a, weights_only=True), torch.load(b, weights_only=True)
    return x.keys() == y.keys() and all(torch.equal(x[k], y[k]) for k in x)


def test_inr_fit_config_reproduces_and_flags_override(tmp_path, tiny_png, torch_one_thread):
    from inr.cli import main

    png = str(tiny_png[0])
    assert main(["fit", png, "--model", "siren", "--set", "hidden=8", "--hidden-layers", "1", "--steps", "5",
                 "--seconds", "none", "--quiet", "--out", str(tmp_path / "a")]) == 0
    assert main(["fit", png, "--config", str(tmp_path / "a" / "config.json"), "--out", str(tmp_path / "b"),
                 "--quiet"]) == 0
    assert _same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")
    assert main(["fit", png, "--config", str(tmp_path / "a" / "config.json"), "--steps", "3", "--out",
                 str(tmp_path / "c"), "--quiet"]) == 0
    m = json.loads((tmp_path / "c" / "metrics.json").read_text())
    assert m["steps"] == 3 and m["config"]["model"]["hidden"] == 8


def test_inr_fit_config_file_in_toml(tmp_path, tiny_png, torch_one_thread):
    from inr.cli import main

    (tmp_path / "c.toml").write_text('batch = 64\n[model]\nname = "gauss"\nparams = 500\n[train]\nsteps = 4\n'
                                     'seconds = 10.0\n')
    assert main(["fit", str(tiny_png[0]), "--config", str(tmp_path / "c.toml"), "--out", str(tmp_path / "r"),
                 "--quiet"]) == 0
    cfg = json.loads((tmp_path / "r" / "config.json").read_text())["fit"]
    assert (cfg["model"]["name"], cfg["batch"], cfg["train"]["steps"]) == ("gauss", 64, 4)
    (tmp_path / "bad.toml").write_text("[train]\nstepz = 4\n")
    assert main(["fit", str(tiny_png[0]), "--config", str(tmp_path / "bad.toml"), "--out", str(tmp_path / "x"),
                 "--quiet"]) == 2
    assert not (tmp_path / "x").exists()


def test_ct_recon_config_and_set(tmp_path, torch_one_thread):
    from tomography.cli import main

    base = ["recon", "--phantom", "--size", "24", "--views", "8", "--steps", "6", "--params", "2000", "--model",
            "siren", "--quiet"]
    assert main([*base, "--set", "hidden_layers=1", "--batch", "4", "--out", str(tmp_path / "a")]) == 0
    assert main(["recon", "--config", str(tmp_path / "a" / "config.json"), "--quiet", "--out",
                 str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")
    assert len(torch.load(tmp_path / "a" / "model.pt", weights_only=True)) == 6   # 2 sine layers + head
    assert main([*base, "--set", "no_such_thing=1", "--out", str(tmp_path / "c")]) == 2


def test_runge_config_reproduces(tmp_path):
    from approx.cli import main

    assert main(["runge", "--quick", "--strategies", "relinear-sg", "--seeds", "1", "--quiet", "--out",
                 str(tmp_path / "a")]) == 0
    assert main(["runge", "--config", str(tmp_path / "a" / "config.json"), "--quiet", "--out",
                 str(tmp_path / "b")]) == 0
    a, b = (json.loads((tmp_path / x / "metrics.json").read_text())["summary"] for x in "ab")
    assert a["relinear-sg"]["test_rmse"] == b["relinear-sg"]["test_rmse"]


@pytest.mark.parametrize("flag", ["--batch", "--batch-size"])
def test_classify_batch_set_and_config(tmp_path, flag, torch_one_thread):
    from classify.cli import main

    argv = ["train", "--model", "resnet20", "--set", "base_width=4", "--epochs", "1", "--limit-train", "64",
            "--limit-test", "32", flag, "32", "--quiet", "--threads", "1"]
    assert main([*argv, "--out", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())
    assert cfg["args"]["batch_size"] == 32 and cfg["args"]["model_args"] == {"base_width": 4}
    assert main(["train", "--config", str(tmp_path / "a" / "config.json"), "--quiet", "--out",
                 str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")


def test_every_tool_has_a_console_script():
    import tomllib
    from pathlib import Path

    scripts = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text())["project"]["scripts"]
    assert {"inr", "inr-pde", "inr-ct", "inr-approx", "inr-classify"} <= set(scripts)


def test_pde_config_set_and_batch(tmp_path, torch_one_thread):
    from pde.__main__ import main

    base = ["solve", "--problem", "poisson2d", "--model", "siren", "--params", "500", "--steps", "8",
            "--lbfgs-steps", "0", "--quiet"]
    assert main([*base, "--set", "hidden_layers=1", "--set", "rad_every=50", "--batch", "64",
                 "--out", str(tmp_path / "a")]) == 0
    cfg = json.loads((tmp_path / "a" / "config.json").read_text())["solve"]
    assert (cfg["points"], cfg["rad_every"], cfg["hyper"]) == (64, 50, {"hidden_layers": 1})
    assert main(["solve", "--config", str(tmp_path / "a" / "config.json"), "--quiet", "--out",
                 str(tmp_path / "b")]) == 0
    assert _same_weights(tmp_path / "a" / "model.pt", tmp_path / "b" / "model.pt")
    assert main(["solve", "--config", str(tmp_path / "a" / "config.json"), "--steps", "3", "--quiet", "--out",
                 str(tmp_path / "c")]) == 0
    assert json.loads((tmp_path / "c" / "config.json").read_text())["solve"]["steps"] == 3
