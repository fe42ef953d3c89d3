"""Residual-based adaptive sampling (RAD, Wu et al. 2023) in pde.solve: the draw follows
p ~ |r|^k / mean|r|^k + c, it is reproducible from the seed, and the options are checked."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pde.solve import SolveConfig, rad_draw, rad_probabilities, solve

pytestmark = pytest.mark.usefixtures("torch_one_thread")


def test_probabilities_follow_the_formula():
    r = torch.tensor([0.0, -1.0, 2.0, 0.5, -3.0])
    for k, c in ((1.0, 1.0), (2.0, 0.0), (0.5, 3.0)):
        e = np.abs(r.numpy().astype(np.float64)) ** k
        w = e / e.mean() + c
        assert np.allclose(rad_probabilities(r, k, c).numpy(), w / w.sum(), rtol=1e-12, atol=0)
    assert torch.allclose(rad_probabilities(torch.zeros(4)), torch.full((4,), 0.25, dtype=torch.float64))


@pytest.mark.parametrize("k,c,left,right", [(1.0, 1.0, 3.0, 0.0), (2.0, 1.0, 2.0, 1.0), (1.0, 0.0, 1.0, 3.0)])
def test_points_land_where_the_residual_is_large_in_the_right_proportion(k, c, left, right):
    """A fake residual, ``left`` on x < 1/2 and ``right`` elsewhere: the share of drawn points on the left
    is p_left = sum of the left weights / all weights; the count must lie within 5 binomial standard
    deviations.  The pool is 100x the draw, so drawing without replacement barely changes the proportion."""
    g = torch.Generator().manual_seed(0)
    pool = torch.rand(100_000, 2, generator=g)
    is_left = pool[:, 0] < 0.5
    r = torch.where(is_left, left, right)[:, None] * torch.where(torch.rand(100_000, generator=g) < 0.5, 1, -1)[:, None]
    w = np.abs(r.numpy().ravel().astype(np.float64)) ** k
    w = w / w.mean() + c
    p_left = w[is_left.numpy()].sum() / w.sum()
    n = 1000
    x = rad_draw(pool, r, n, torch.Generator().manual_seed(1), k, c)
    assert x.shape == (n, 2)
    assert len(set(map(tuple, x.tolist()))) == n                       # without replacement
    count = int((x[:, 0] < 0.5).sum())
    sd = math.sqrt(n * p_left * (1 - p_left))
    assert abs(count - n * p_left) <= 5 * sd, (count, n * p_left, sd)
    # and a uniform draw (k = 0) would sit near one half: the test can tell the two apart
    assert abs(n * p_left - n * float(is_left.double().mean())) > 5 * sd


def test_draw_is_reproducible_from_the_generator():
    pool, r = torch.rand(500, 2), torch.rand(500, 1)
    a = rad_draw(pool, r, 50, torch.Generator().manual_seed(7))
    b = rad_draw(pool, r, 50, torch.Generator().manual_seed(7))
    c = rad_draw(pool, r, 50, torch.Generator().manual_seed(8))
    assert torch.equal(a, b) and not torch.equal(a, c)
    with pytest.raises(ValueError, match="pool"):
        rad_draw(pool, r, 501, torch.Generator())


CFG = dict(problem="multiscale1d", model="siren", params=300, steps=12, points=32, eval_res=101, quiet=True,
           device="cpu", residual_points=64)


def _weights(sol):
    return {k: v.clone() for k, v in sol.ansatz.state_dict().items()}


def test_rad_solve_is_seeded_and_differs_from_uniform():
    a = solve(SolveConfig(**CFG, sampling="rad", rad_every=4, seed=1))
    b = solve(SolveConfig(**CFG, sampling="rad", rad_every=4, seed=1))
    c = solve(SolveConfig(**CFG, sampling="rad", rad_every=4, seed=2))
    u = solve(SolveConfig(**CFG, seed=1))
    wa, wb, wc, wu = map(_weights, (a, b, c, u))
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    assert not all(torch.equal(wa[k], wc[k]) for k in wa)
    assert not all(torch.equal(wa[k], wu[k]) for k in wa)      # the RAD draws at steps 4 and 8 changed the run
    assert math.isfinite(a.metrics["rel_l2"])


def test_rad_calls_the_residual_on_the_pool_without_a_graph(monkeypatch):
    import importlib

    solve_module = importlib.import_module("pde.solve")
    real, seen = solve_module.residual, []

    def spy(ansatz, problem, x, create_graph=True, **kw):
        seen.append((x.shape[0], create_graph))
        return real(ansatz, problem, x, create_graph=create_graph, **kw)

    monkeypatch.setattr(solve_module, "residual", spy)
    solve(SolveConfig(**CFG, sampling="rad", rad_every=5, rad_pool=4, seed=0))
    pool_calls = [s for s in seen if s[0] == 4 * 32]
    assert pool_calls == [(128, False), (128, False)]          # steps 5 and 10


@pytest.mark.parametrize("bad,match", [(dict(sampling="rad", resample=True), "resample"),
                                       (dict(sampling="grid"), "sampling"), (dict(rad_every=0), "rad-every"),
                                       (dict(rad_k=-1.0), "rad-k")])
def test_config_checks(bad, match):
    with pytest.raises(ValueError, match=match):
        SolveConfig(**{**CFG, **bad}).validate()


@pytest.mark.parametrize("args", [["--sampling", "grid"], ["--rad-every", "0"], ["--rad-pool", "x"],
                                  ["--rad-k", "-1"], ["--sampling", "rad", "--resample"]])
def test_cli_bad_values_are_one_line_exit_2(args, capsys):
    from pde.__main__ import main

    assert main(["solve", *args, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert len(err.strip().splitlines()) == 1 and "error:" in err


def test_lbfgs_points_draws_its_own_set_at_the_switch(monkeypatch):
    import importlib

    solve_module = importlib.import_module("pde.solve")
    real, seen = solve_module.residual, []

    def spy(ansatz, problem, x, create_graph=True, **kw):
        seen.append(x.shape[0])
        return real(ansatz, problem, x, create_graph=create_graph, **kw)

    monkeypatch.setattr(solve_module, "residual", spy)
    sol = solve(SolveConfig(**{**CFG, "steps": 3}, resample=True, lbfgs_steps=2, lbfgs_iter=2, lbfgs_points=77))
    assert sol.metrics["lbfgs"]["points"].startswith("77 uniform points")
    assert 77 in seen and seen[:3] == [32, 32, 32]   # Adam on the per-step points, L-BFGS on its own set
    with pytest.raises(ValueError, match="lbfgs-points"):
        SolveConfig(**CFG, lbfgs_points=-1).validate()
