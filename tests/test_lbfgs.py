"""The L-BFGS stage of inr.train.fit: it solves a least-squares problem that Adam only approaches, marks the
switch in the history, recovers from a non-finite loss, stops when it no longer moves, resumes across the
switch bit-equal, and every regression tool takes the same --lbfgs-* flags."""
from __future__ import annotations

import importlib

import numpy as np
import pytest
import torch
from torch import nn

from inr.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _linear_problem(seed=0):
    """A linear model and exact data y = X w + b; the least-squares solution is numpy's lstsq."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 5, generator=g, dtype=torch.float64) * torch.tensor([1.0, 3.0, 0.3, 1.0, 10.0],
                                                                             dtype=torch.float64)
    y = x @ torch.randn(5, 1, generator=g, dtype=torch.float64) + 0.7
    torch.manual_seed(seed)
    model = nn.Linear(5, 1).double()
    a = np.hstack([x.numpy(), np.ones((64, 1))])
    sol = np.linalg.lstsq(a, y.numpy(), rcond=None)[0].ravel()
    return model, x, y, sol


def _cfg(**kw):
    base = dict(steps=40, lr=1e-2, quiet=True, device="cpu", guard_every=5)
    return TrainConfig(**{**base, **kw})


def test_lbfgs_stage_solves_least_squares_that_adam_only_approaches():
    model, x, y, sol = _linear_problem()
    adam = fit(model, lambda s: ((model(x) - y) ** 2).mean(), _cfg(steps=80))
    model2, *_ = _linear_problem()
    both = fit(model2, lambda s: ((model2(x) - y) ** 2).mean(), _cfg(steps=40, lbfgs_steps=20))
    assert both.final_loss < 1e-12 < 1e-3 * adam.final_loss     # 40 Adam + L-BFGS vs 80 Adam steps
    got = np.concatenate([model2.weight.detach().numpy().ravel(), model2.bias.detach().numpy()])
    assert np.abs(got - sol).max() < 1e-6 * np.abs(sol).max()


def test_history_marks_the_stage_and_the_run_stops_when_converged():
    model, x, y, _ = _linear_problem()
    res = fit(model, lambda s: (((model(x) - y) ** 2).mean(), {"rmse": ((model(x) - y) ** 2).mean().sqrt().detach()}),
              _cfg(steps=30, lbfgs_steps=500, lbfgs_iter=5))
    rows = [r for r in res.history if "loss" in r]
    stages = [r["stage"] for r in rows]
    assert stages[:30] == ["adam"] * 30 and set(stages[30:]) == {"lbfgs"} and len(stages) > 30
    assert all(r["evals"] >= 1 and r["lr"] == 1.0 and "rmse" in r for r in rows[30:])
    assert all("evals" not in r for r in rows[:30])
    # an exact least-squares problem: L-BFGS reaches the minimum and then no longer moves
    assert res.stopped_by == "converged" and res.steps < 30 + 500
    assert rows[-1]["loss"] < 1e-20 or res.final_loss < 1e-20


def test_without_lbfgs_the_history_has_no_stage_column():
    model, x, y, _ = _linear_problem()
    res = fit(model, lambda s: ((model(x) - y) ** 2).mean(), _cfg(steps=5))
    assert all("stage" not in r for r in res.history) and res.stopped_by == "steps"


def test_guard_in_the_lbfgs_stage_recovers_from_a_nan_loss(capsys):
    model, x, y, _ = _linear_problem()
    calls = {"n": 0}

    def loss_fn(step):
        calls["n"] += 1
        loss = ((model(x) - y) ** 2).mean()
        return loss * float("nan") if calls["n"] == 40 + 7 else loss   # inside the 2nd L-BFGS step

    res = fit(model, loss_fn, _cfg(steps=40, lbfgs_steps=15, lbfgs_iter=5, quiet=False))
    assert len(res.events) == 1 and "L-BFGS non-finite loss" in res.events[0]["event"]
    assert res.events[0]["step"] >= 40 and res.events[0]["lr_scale"] == 0.5
    assert any("event" in r and "L-BFGS" in r["event"] for r in res.history)
    assert "cleared the L-BFGS memory" in capsys.readouterr().err
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert res.final_loss < 1e-12                      # recovered and still solved the problem


def test_guard_restores_non_finite_parameters_from_the_lbfgs_stage():
    model, x, y, _ = _linear_problem()
    seen = {"n": 0}

    def loss_fn(step):
        seen["n"] += 1
        if seen["n"] == 45:                              # poison the weights mid-stage
            with torch.no_grad():
                model.weight[0, 0] = float("inf")
        return ((model(x) - y) ** 2).mean()

    res = fit(model, loss_fn, _cfg(steps=40, lbfgs_steps=10, lbfgs_iter=5))
    assert res.events and all(torch.isfinite(p).all() for p in model.parameters())


def _mlp_problem():
    torch.manual_seed(1)
    x = torch.linspace(-1, 1, 40)[:, None]
    y = torch.sin(3 * x)
    model = nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 1))
    return model, lambda s: ((model(x) - y) ** 2).mean()


def test_resume_across_the_switch_gives_the_weights_of_an_uninterrupted_run(tmp_path):
    cfg = dict(steps=12, lbfgs_steps=8, lbfgs_iter=4, checkpoint_every=3, quiet=True, device="cpu", lr=1e-2)
    model, loss_fn = _mlp_problem()
    full = fit(model, loss_fn, TrainConfig(**cfg))
    want = {k: v.clone() for k, v in model.state_dict().items()}

    ckpt = str(tmp_path / "ckpt.pt")
    model, loss_fn = _mlp_problem()
    calls = {"n": 0}

    def interrupted(step):
        calls["n"] += 1
        if step == 16:               # in L-BFGS step 5 (steps 13..20); the checkpoint of step 15 is kept
            raise KeyboardInterrupt
        return loss_fn(step)

    with pytest.raises(KeyboardInterrupt):
        fit(model, interrupted, TrainConfig(**cfg, checkpoint_path=ckpt))
    state = torch.load(ckpt, weights_only=True)
    assert state["stage"] == "lbfgs" and state["step"] == 15 and state["switch_step"] == 12
    model, loss_fn = _mlp_problem()          # a fresh process would build the model anew
    res = fit(model, loss_fn, TrainConfig(**cfg, checkpoint_path=ckpt, resume=True))
    assert res.steps == full.steps == 20
    assert all(torch.equal(want[k], v) for k, v in model.state_dict().items())
    assert [r.get("stage") for r in res.history] == [r.get("stage") for r in full.history]


def test_time_budget_splits_between_the_stages():
    model, loss_fn = _mlp_problem()
    res = fit(model, loss_fn, TrainConfig(steps=10**6, seconds=1.0, lbfgs_steps=10**6, lbfgs_fraction=0.4,
                                          lbfgs_iter=2, quiet=True, device="cpu", lr=1e-2))
    first = next(r for r in res.history if r.get("stage") == "lbfgs")
    last_adam = max(r["seconds"] for r in res.history if r.get("stage") == "adam")
    assert 0.6 <= first["seconds"] and last_adam <= 0.9     # Adam until 0.6 s (+ one step, on a loaded machine)
    assert res.stopped_by in ("seconds", "converged")


@pytest.mark.parametrize("bad", [dict(lbfgs_steps=-1), dict(lbfgs_lr=0.0), dict(lbfgs_fraction=1.0),
                                 dict(lbfgs_history=0), dict(lbfgs_iter=0)])
def test_config_checks(bad):
    with pytest.raises(ValueError, match="lbfgs"):
        TrainConfig(**bad)


# ---- the command-line tools ------------------------------------------------------------------------

def _mains():
    from approx.cli import main as approx_main
    from inr.cli import main as inr_main
    from pde.__main__ import main as pde_main
    from tomography.cli import main as ct_main

    return {"inr": (inr_main, "fit"), "approx": (approx_main, "runge"), "pde": (pde_main, "solve"),
            "tomography": (ct_main, "recon")}


@pytest.mark.parametrize("tool", ["inr", "approx", "pde", "tomography"])
def test_every_regression_tool_shows_the_lbfgs_options(tool, capsys):
    main, command = _mains()[tool]
    assert main([command, "--help"]) == 0
    text = " ".join(capsys.readouterr().out.split())
    # pde's defaults are the Poisson study's recipe (L-BFGS on, 70 % of a time budget; docs/methods.md section 5)
    steps, fraction = ("None", "0.7") if tool == "pde" else ("0", "0.5")
    for flag, default in (("--lbfgs-steps", steps), ("--lbfgs-fraction", fraction), ("--lbfgs-lr", "1.0"),
                          ("--lbfgs-history", "50"), ("--lbfgs-iter", "10")):
        if default == "None":   # no fixed number: the help says what it depends on
            assert flag in text and "default 1,000,000 with --seconds" in text.rsplit(flag, 1)[-1][:400], flag
            continue
        assert flag in text and f"(default: {default})" in text.rsplit(flag, 1)[-1][:400], flag   # its own entry


@pytest.mark.parametrize("tool", ["inr", "approx", "pde", "tomography"])
@pytest.mark.parametrize("args", [["--lbfgs-steps", "-1"], ["--lbfgs-steps", "x"], ["--lbfgs-fraction", "1"],
                                  ["--lbfgs-fraction", "0"], ["--lbfgs-lr", "nan"], ["--lbfgs-history", "0"],
                                  ["--lbfgs-iter", "0"]])
def test_bad_lbfgs_values_are_one_line_exit_2(tool, args, capsys):
    main, command = _mains()[tool]
    assert main([command, *args]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err and args[0] in err


PDE = ["solve", "--problem", "multiscale1d", "--model", "siren", "--params", "300", "--steps", "10", "--points", "32",
       "--eval-res", "101", "--quiet", "--threads", "1", "--seed", "3", "--lbfgs-steps", "6", "--lbfgs-iter", "3"]


@pytest.mark.parametrize("extra", [[], ["--resample"], ["--sampling", "rad", "--rad-every", "4"]])
def test_pde_resume_mid_lbfgs_gives_the_weights_of_an_uninterrupted_run(tmp_path, monkeypatch, extra):
    import json

    from inr.cliutil import EXIT_INTERRUPTED
    from inr.runs import staging_dir
    from pde.__main__ import main
    solve_module = importlib.import_module("pde.solve")

    full, cut = tmp_path / "full", tmp_path / "cut"
    assert main([*PDE, *extra, "--out", str(full)]) == 0
    m = json.loads((full / "metrics.json").read_text())
    assert m["lbfgs"]["switch_after_step"] == 10 and m["steps"] > 10
    real, seen = solve_module.residual, {"n": 0}

    def interrupting(*a, **k):
        seen["n"] += 1
        if seen["n"] == 10 + 12 + (2 if "rad" in extra else 0):   # a few L-BFGS steps in
            raise KeyboardInterrupt
        return real(*a, **k)

    monkeypatch.setattr(solve_module, "residual", interrupting)
    assert main([*PDE, *extra, "--checkpoint-every", "2", "--out", str(cut)]) == EXIT_INTERRUPTED
    monkeypatch.setattr(solve_module, "residual", real)
    state = torch.load(staging_dir(cut) / "checkpoint.pt", weights_only=True)
    assert state["stage"] == "lbfgs" and state["step"] > 10
    assert main([*PDE, *extra, "--checkpoint-every", "2", "--out", str(cut), "--resume"]) == 0
    a = torch.load(full / "model.pt", weights_only=True)
    b = torch.load(cut / "model.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_runge_with_lbfgs(tmp_path):
    from approx.cli import main

    out = tmp_path / "r"
    assert main(["runge", "--quick", "--strategies", "regular", "--lbfgs-steps", "5", "--lbfgs-iter", "3",
                 "--quiet", "--out", str(out)]) == 0
    import json
    m = json.loads((out / "metrics.json").read_text())
    assert m["config"]["lbfgs_steps"] == 5
    assert "L-BFGS steps" in (out / "table.md").read_text()


def test_inr_fit_with_lbfgs(tiny_png, tmp_path):
    import csv

    from inr.cli import main

    path, _ = tiny_png
    out = tmp_path / "run"
    assert main(["fit", str(path), "--model", "siren", "--params", "2000", "--steps", "20", "--seconds", "none",
                 "--lbfgs-steps", "4", "--lbfgs-iter", "3", "--quiet", "--threads", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert {"adam", "lbfgs"} <= {r["stage"] for r in rows if r.get("stage")}
    # several files: not available, one line
    assert main(["fit", str(path), str(path), "--lbfgs-steps", "2", "--quiet", "--out", str(tmp_path / "m")]) == 2


def test_tomography_lbfgs_stage_uses_every_view(tmp_path, monkeypatch):
    """With random view subsets for Adam, the L-BFGS stage's loss is the deterministic full-sinogram loss."""
    import csv

    from tomography import recon as R
    from tomography.cli import main

    seen = []
    real = R.view_subset_loss
    monkeypatch.setattr(R, "view_subset_loss", lambda *a, **k: seen.append(1) or real(*a, **k))
    out = tmp_path / "ct"
    assert main(["recon", "--phantom", "--size", "24", "--views", "12", "--model", "hash", "--params", "2000",
                 "--steps", "6", "--view-batch", "4", "--lbfgs-steps", "2", "--lbfgs-iter", "2", "--quiet",
                 "--threads", "1", "--out", str(out)]) == 0
    rows = list(csv.DictReader(open(out / "history.csv")))
    assert "lbfgs" in {r["stage"] for r in rows if r.get("stage")}
    assert len(seen) == 7   # 6 Adam steps + the final-loss evaluation; the L-BFGS evaluations use every view


def test_make_full_loss_uses_every_point_or_one_fixed_subset():
    from inr.fitting import make_full_loss

    model = nn.Linear(2, 1)
    coords, values = torch.rand(100, 2), torch.rand(100, 1)
    full = make_full_loss(model, coords, values, "image")
    want = ((model(coords) - (values * 2 - 1)) ** 2).mean()
    assert torch.allclose(full(0)[0], want)
    sub = make_full_loss(model, coords, values, "image", seed=1, max_points=30)
    rng = torch.get_rng_state()
    assert torch.equal(sub(0)[0], sub(5)[0]) and torch.equal(rng, torch.get_rng_state())
    assert torch.equal(sub(0)[0], make_full_loss(model, coords, values, "image", seed=1, max_points=30)(0)[0])
