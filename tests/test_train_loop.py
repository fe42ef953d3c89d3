"""inr.train.fit as stages and callbacks: the TrainState checkpoint layout (to_dict / from_dict), the time
cadence of whole-signal evaluations (TrainConfig.eval_fraction) and the progress bar's budget.  Times come
from a fake clock (dyadic increments, exact in float64), so nothing here depends on the machine's speed."""
from __future__ import annotations

import io
import math
from dataclasses import fields

import pytest
import torch
from torch import nn

import inr.train as T
from inr.callbacks import ProgressBar, Step, TrainState, bar_budget, load_checkpoint, rng_state
from inr.runfiles import save_torch
from inr.train import TrainConfig, fit

pytestmark = pytest.mark.usefixtures("torch_one_thread")

STEP_S, EVAL_S = 2.0 ** -6, 2.0 ** -3        # fake seconds per loss evaluation / per whole-signal evaluation


class FakeClock:
    def __init__(self):
        self.t = 0.0

    def __call__(self) -> float:
        return self.t


@pytest.fixture
def clock(monkeypatch):
    c = FakeClock()
    monkeypatch.setitem(T.CLOCKS, "wall", c)
    return c


def _problem(clock, interrupt_at=None, eval_s=EVAL_S):
    torch.manual_seed(1)
    x = torch.linspace(-1, 1, 40)[:, None]
    y = torch.sin(3 * x)
    model = nn.Sequential(nn.Linear(1, 12), nn.Tanh(), nn.Linear(12, 1))

    def loss_fn(step):
        if step == interrupt_at:
            raise KeyboardInterrupt
        clock.t += STEP_S
        return ((model(x) - y) ** 2).mean()

    def evaluate(step):
        clock.t += eval_s
        return {"mse": float(((model(x) - y) ** 2).mean())}

    return model, loss_fn, evaluate


def _same(a, b) -> bool:
    """Deep equality of checkpoint values (tensors compared with torch.equal)."""
    if torch.is_tensor(a) or torch.is_tensor(b):
        return torch.is_tensor(a) and torch.is_tensor(b) and a.dtype == b.dtype and torch.equal(a, b)
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return isinstance(b, (list, tuple)) and len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b))
    if isinstance(a, float) and math.isnan(a):
        return isinstance(b, float) and math.isnan(b)
    return type(a) is type(b) and a == b


def test_train_state_round_trips_through_a_weights_only_checkpoint(tmp_path):
    model = nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.ones(1, 3)).sum().backward()
    opt.step()
    state = TrainState(step=17, stage="lbfgs", switch_step=12, stalls=1, elapsed=3.25, lr_scale=0.5, best_loss=0.125,
                       n_finite=16, last_loss=0.25, eval_seconds=0.5, evaluations=3, next_eval=4.0,
                       history=[{"step": 1, "loss": 1.5, "stage": "adam"}], events=[{"step": 5, "event": "x"}],
                       reached={"any": {30.0: {"seconds": 1.0, "step": 4}, 40.0: None}, "batch": {30.0: None},
                                "eval": {}},
                       model=model.state_dict(), optimizer=opt.state_dict(), rng=rng_state(),
                       extra={"g": torch.arange(3)}, fingerprint="abc")
    d = state.to_dict()
    assert set(d) == {f.name for f in fields(TrainState)}
    save_torch(d, tmp_path / "c.pt")
    back = TrainState.from_dict(load_checkpoint(tmp_path / "c.pt"))
    assert _same(back.to_dict(), d)
    assert _same(TrainState.from_dict(d).to_dict(), d)
    with pytest.raises(KeyError, match="next_eval"):
        TrainState.from_dict({k: v for k, v in d.items() if k != "next_eval"})


def test_fit_writes_the_train_state_layout_and_refuses_another(tmp_path, clock):
    model, loss_fn, _ = _problem(clock)
    ck = tmp_path / "ck.pt"
    fit(model, loss_fn, TrainConfig(steps=4, checkpoint_every=2, checkpoint_path=str(ck), quiet=True))
    state = load_checkpoint(ck)
    assert set(state) == {f.name for f in fields(TrainState)} and state["step"] == 4
    del state["history"]
    torch.save(state, ck)
    with pytest.raises(T.CheckpointError, match="does not fit"):
        fit(model, loss_fn, TrainConfig(steps=6, checkpoint_every=2, checkpoint_path=str(ck), resume=True, quiet=True))


def _eval_rows(result):
    return [r for r in result.history if "eval_mse" in r]


def test_eval_fraction_keeps_evaluation_time_within_the_fraction(clock):
    frac = 0.125
    model, loss_fn, evaluate = _problem(clock)
    # eval_every=1 is overridden by the time cadence
    r = fit(model, loss_fn, TrainConfig(steps=640, eval_fraction=frac, quiet=True), evaluate=evaluate, eval_every=1)
    assert r.seconds == 640 * STEP_S == 10.0
    rows = _eval_rows(r)
    # after step 1; then each time the training time reaches (evaluation time so far + one more) / fraction:
    # 2 s, 3 s, ... 9 s of training (64 steps a second); never at the last step; the final one at step 640
    assert [e["step"] for e in rows] == [1, *range(128, 640, 64), 640]
    assert r.evaluations == len(rows) and r.eval_seconds == len(rows) * EVAL_S
    for k, e in enumerate(rows[1:-1], start=2):       # from the second one on: within the fraction
        assert k * EVAL_S <= frac * e["seconds"] + 1e-12
    assert r.eval_seconds <= max(frac * r.seconds, EVAL_S) + EVAL_S   # + the final evaluation


def test_eval_fraction_with_a_time_budget_and_with_a_step_budget(clock):
    model, loss_fn, evaluate = _problem(clock)
    r = fit(model, loss_fn, TrainConfig(steps=10**6, seconds=5.0, eval_fraction=0.125, quiet=True), evaluate=evaluate)
    assert r.stopped_by == "seconds" and r.seconds == 5.0
    assert [e["step"] for e in _eval_rows(r)] == [1, 128, 192, 256, 320]
    assert r.eval_seconds <= 0.125 * r.seconds + EVAL_S

    # an evaluation that costs more than the whole run allows: the first (timed early) and the final one
    model, loss_fn, _ = _problem(clock)

    def slow(step):
        clock.t += 4.0
        return {"psnr": 31.0}

    r = fit(model, loss_fn, TrainConfig(steps=50, eval_fraction=0.1, targets=(30,), quiet=True), evaluate=slow)
    assert [e["step"] for e in r.history if "eval_psnr" in e] == [1, 50]
    assert r.evaluations == 2 and r.time_to_target_eval["30.0"] == {"seconds": round(STEP_S, 4), "step": 1}
    assert r.seconds == 50 * STEP_S      # evaluation is off the training clock


@pytest.mark.parametrize("bad", [0.0, 1.0, -0.1])
def test_eval_fraction_is_checked(bad):
    with pytest.raises(ValueError, match="eval_fraction"):
        TrainConfig(eval_fraction=bad)


def test_resume_with_the_time_cadence_across_the_switch_replays_the_run(tmp_path, clock):
    """Kill in the L-BFGS stage, resume: the same weights, and (the clock being fake) the same history,
    evaluations included -- the cadence's next due time is part of the TrainState."""
    cfg = dict(steps=12, lbfgs_steps=8, lbfgs_iter=4, checkpoint_every=3, quiet=True, device="cpu", lr=1e-2,
               eval_fraction=0.25)
    model, loss_fn, evaluate = _problem(clock, eval_s=STEP_S)
    full = fit(model, loss_fn, TrainConfig(**cfg), evaluate=evaluate)
    want = {k: v.clone() for k, v in model.state_dict().items()}
    assert len(_eval_rows(full)) >= 5 and full.steps == 20

    ck = str(tmp_path / "ck.pt")
    clock.t = 0.0
    model, loss_fn, evaluate = _problem(clock, interrupt_at=16, eval_s=STEP_S)
    with pytest.raises(KeyboardInterrupt):
        fit(model, loss_fn, TrainConfig(**cfg, checkpoint_path=ck), evaluate=evaluate)
    assert load_checkpoint(ck)["stage"] == "lbfgs"
    clock.t = 100.0                               # a later process: the clock reads something else
    model, loss_fn, evaluate = _problem(clock, eval_s=STEP_S)
    res = fit(model, loss_fn, TrainConfig(**cfg, checkpoint_path=ck, resume=True), evaluate=evaluate)
    assert all(torch.equal(want[k], v) for k, v in model.state_dict().items())
    assert res.history == full.history and res.seconds == full.seconds
    assert res.eval_seconds == full.eval_seconds and res.last_step_loss == full.last_step_loss


def test_progress_bar_follows_the_budget_that_stops_the_run(monkeypatch, clock):
    assert bar_budget(None, 1000, 50.0, 10) == ("it", 1000, 10)
    assert bar_budget(60.0, 1000, 6.0, 50) == ("s", 60.0, 6.0)          # time is further along: it binds
    assert bar_budget(60.0, 1000, 6.0, 500) == ("it", 1000, 500)        # the steps will run out first

    class Tty(io.StringIO):
        def isatty(self):
            return True

    monkeypatch.setattr("sys.stderr", Tty())
    model, _, _ = _problem(clock)
    cfg = TrainConfig(steps=100, seconds=10.0, desc="bar")
    run = T.Run(model, cfg, torch.optim.Adam(model.parameters()))
    bar = ProgressBar(cfg, run.total_steps)
    bar.begin(run)
    assert (bar.bar.unit, bar.bar.total, bar.bar.n) == ("s", 10.0, 0.0)
    clock.t, run.state.step = 2.0, 10              # 20 % of the time, 10 % of the steps: seconds
    bar.on_step(run, Step(loss=1.0, now=2.0))
    assert (bar.bar.unit, bar.bar.total, bar.bar.n) == ("s", 10.0, 2.0)
    clock.t, run.state.step = 2.5, 40              # the steps now run out first
    bar.on_step(run, Step(loss=1.0, now=2.5))
    assert (bar.bar.unit, bar.bar.total, bar.bar.n) == ("it", 100, 40)
    bar.end()
    fit(model, lambda s: model(torch.ones(1, 1)).square().mean(), TrainConfig(steps=3, desc="bar"))   # on a tty
