"""pde solve / tomography recon: --checkpoint-every N, an interruption, then --resume ends with the same
weights as an uninterrupted run (torch.equal on the state dicts)."""
from __future__ import annotations

import importlib

import pytest
import torch

from inr.cliutil import EXIT_INTERRUPTED
from inr.runs import staging_dir

pytestmark = pytest.mark.usefixtures("torch_one_thread")

PDE = ["solve", "--problem", "multiscale1d", "--model", "siren", "--params", "300", "--steps", "24", "--points", "32",
       "--eval-res", "101", "--quiet", "--threads", "1", "--seed", "3", "--lbfgs-steps", "0"]
CT = ["recon", "--phantom", "--size", "16", "--views", "8", "--model", "siren", "--params", "800", "--steps", "24",
      "--tv-iterations", "2", "--sart-iterations", "1", "--quiet", "--threads", "1", "--seed", "2"]


def _interrupt_after(monkeypatch, module, name, calls):
    """Make ``module.name`` raise KeyboardInterrupt (as Ctrl-C would) on its ``calls``-th call."""
    real = getattr(module, name)
    seen = {"n": 0}

    def wrapped(*a, **k):
        seen["n"] += 1
        if seen["n"] == calls:
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return lambda: monkeypatch.setattr(module, name, real)


def _count_calls(monkeypatch, module, name):
    real = getattr(module, name)
    seen = {"n": 0}

    def wrapped(*a, **k):
        seen["n"] += 1
        return real(*a, **k)

    monkeypatch.setattr(module, name, wrapped)
    return seen


def _weights(path):
    return torch.load(path, weights_only=True)


def _same(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("extra", [["--no-resample"], ["--resample"]])
def test_pde_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, extra):
    from pde.__main__ import main
    solve_module = importlib.import_module("pde.solve")   # pde.solve is also the function's name

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*PDE, *extra, "--out", str(full)]) == 0
    # interrupted in step 17 (the loss of step index 16): the checkpoint of step 15 is kept
    restore = _interrupt_after(monkeypatch, solve_module, "residual", 17)
    assert main([*PDE, *extra, "--checkpoint-every", "5", "--out", str(cut)]) == EXIT_INTERRUPTED
    restore()
    assert not cut.exists() and (staging_dir(cut) / "checkpoint.pt").is_file()
    calls = _count_calls(monkeypatch, solve_module, "residual")
    assert main([*PDE, *extra, "--checkpoint-every", "5", "--out", str(cut), "--resume"]) == 0
    assert calls["n"] == (24 - 15) + 2      # resumed at step 15 (+ the final loss and the held-out residual)
    assert _same(_weights(full / "model.pt"), _weights(cut / "model.pt"))
    assert not staging_dir(cut).exists() and not (cut / "checkpoint.pt").exists()


def test_pde_resume_refuses_other_settings(tmp_path, monkeypatch, capsys):
    from pde.__main__ import main
    solve_module = importlib.import_module("pde.solve")   # pde.solve is also the function's name

    cut = tmp_path / "cut"
    restore = _interrupt_after(monkeypatch, solve_module, "residual", 8)
    assert main([*PDE, "--checkpoint-every", "5", "--out", str(cut)]) == EXIT_INTERRUPTED
    restore()
    assert main([*PDE, "--points", "33", "--checkpoint-every", "5", "--out", str(cut), "--resume"]) == 2
    assert "another run" in capsys.readouterr().err
    assert main([*PDE, "--checkpoint-every", "5"]) == 2          # a checkpoint needs --out
    assert "need --out" in capsys.readouterr().err


def test_tomography_resume_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch):
    import tomography.recon
    from tomography.cli import main

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*CT, "--out", str(full)]) == 0
    restore = _interrupt_after(monkeypatch, tomography.recon, "psnr_from_mse", 13)
    assert main([*CT, "--checkpoint-every", "4", "--out", str(cut)]) == EXIT_INTERRUPTED
    restore()
    assert not cut.exists() and (staging_dir(cut) / "checkpoint.pt").is_file()
    calls = _count_calls(monkeypatch, tomography.recon, "psnr_from_mse")
    assert main([*CT, "--checkpoint-every", "4", "--out", str(cut), "--resume"]) == 0
    assert calls["n"] == (24 - 12) + 1      # resumed at step 12 (+ the final loss)
    assert _same(_weights(full / "model.pt"), _weights(cut / "model.pt"))
    import json
    a = json.loads((full / "metrics.json").read_text())["metrics"]["siren"]
    b = json.loads((cut / "metrics.json").read_text())["metrics"]["siren"]
    assert a["psnr"] == b["psnr"] and b["steps"] == 24
    key = "oracle_best_psnr (oracle selection, not the reported value)"
    assert a[key] == b[key]   # the running best is part of the checkpoint
