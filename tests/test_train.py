"""The one training loop: convergence, schedule, targets, divergence guard, checkpoint/resume."""
import math

import pytest
import torch

from inr.train import DivergenceError, TrainConfig, fit, lr_factor, seed_everything

torch.set_num_threads(2)


def _problem(seed=0):
    seed_everything(seed)
    x = torch.linspace(-1, 1, 64)[:, None]
    y = torch.sin(2 * x)
    model = torch.nn.Sequential(torch.nn.Linear(1, 16), torch.nn.Tanh(), torch.nn.Linear(16, 1))
    loss_fn = lambda step: ((model(x) - y) ** 2).mean()
    return model, loss_fn


def test_fit_reduces_loss_and_logs_history():
    model, loss_fn = _problem()
    first = loss_fn(0).item()
    r = fit(model, loss_fn, TrainConfig(steps=200, lr=3e-2, quiet=True))
    assert r.steps == 200 and r.final_loss < 0.1 * first
    assert len(r.history) == 200 and r.history[-1]["step"] == 200
    assert r.seconds_per_step > 0


def test_schedule_endpoints():
    cfg = TrainConfig(lr_final=0.1)
    assert lr_factor(0.0, cfg, 0) == pytest.approx(1.0)
    assert lr_factor(1.0, cfg, 0) == pytest.approx(0.1)
    exp = TrainConfig(lr_final=0.1, schedule="exponential")
    assert lr_factor(0.5, exp, 0) == pytest.approx(math.sqrt(0.1))


def test_time_to_target_records_first_crossing():
    model, loss_fn = _problem()
    values = iter([10, 20, 31, 29, 41] + [50] * 10)
    r = fit(model, lambda s: (loss_fn(s), {"psnr": next(values)}),
            TrainConfig(steps=6, targets=(30, 40, 60), quiet=True))
    assert r.time_to_target["30.0"]["step"] == 3
    assert r.time_to_target["40.0"]["step"] == 5
    assert r.time_to_target["60.0"] is None


def test_divergence_guard_restores_and_halves_lr():
    model, loss_fn = _problem()
    bad = {4}
    def flaky(step):
        if step in bad:
            bad.clear()
            return torch.tensor(float("nan"))
        return loss_fn(step)
    r = fit(model, flaky, TrainConfig(steps=10, lr=1e-2, guard_every=2, quiet=True))
    assert len(r.events) == 1 and r.events[0]["lr_scale"] == 0.5
    assert r.steps == 10 and math.isfinite(r.final_loss)
    with pytest.raises(DivergenceError):
        fit(model, lambda s: torch.tensor(float("inf")), TrainConfig(steps=5, max_divergences=2, quiet=True))


def test_checkpoint_resume_matches_uninterrupted(tmp_path):
    model, loss_fn = _problem()
    fit(model, loss_fn, TrainConfig(steps=30, lr=1e-2, quiet=True, seed=0))
    straight = [p.detach().clone() for p in model.parameters()]

    ckpt = str(tmp_path / "ck.pt")
    model, loss_fn = _problem()
    cfg = TrainConfig(steps=30, lr=1e-2, quiet=True, checkpoint_every=10, checkpoint_path=ckpt)
    def interrupted(step):
        if step == 20:
            raise KeyboardInterrupt
        return loss_fn(step)
    with pytest.raises(KeyboardInterrupt):
        fit(model, interrupted, cfg)
    model, loss_fn = _problem(seed=123)  # fresh weights: everything must come from the checkpoint
    r = fit(model, loss_fn, TrainConfig(**{**cfg.__dict__, "resume": True}))
    assert r.steps == 30
    for p, q in zip(straight, model.parameters()):
        assert torch.allclose(p, q, atol=1e-6)


def test_wall_budget_stops_early():
    model, loss_fn = _problem()
    r = fit(model, loss_fn, TrainConfig(steps=10**9, seconds=0.3, quiet=True))
    assert r.stopped_by == "seconds" and r.steps < 10**9


@pytest.mark.parametrize("bad", [dict(steps=0), dict(lr=0), dict(schedule="step"), dict(seconds=-1)])
def test_bad_config(bad):
    with pytest.raises(ValueError):
        TrainConfig(**bad)


def test_cpu_clock_counts_this_process_cpu_time_not_waiting():
    """clock="cpu": the budget is the process's CPU time, so time spent waiting (here: sleeping, as when
    other jobs hold the cores) does not use it up; clock="wall" stops on wall time."""
    import time as _time

    import torch as _torch

    from inr.train import TrainConfig as _TC, fit as _fit

    def run(clock):
        w = _torch.nn.Parameter(_torch.zeros(3))

        def loss_fn(step):
            _time.sleep(0.02)
            return (w - 1).square().sum()

        holder = _torch.nn.ParameterList([w])
        return _fit(holder, loss_fn, _TC(steps=25, seconds=0.15, lr=1e-2, quiet=True, clock=clock))

    wall, cpu = run("wall"), run("cpu")
    assert wall.stopped_by == "seconds" and wall.steps < 25
    assert cpu.steps == 25 and cpu.seconds < 0.15
    with pytest.raises(ValueError, match="clock"):
        _TC(clock="sundial")
