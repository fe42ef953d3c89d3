"""Registry: parameter budgets, explicit widths, rebuild from config, clear errors."""
import pytest
import torch

from inr.models import MODELS, build, count_params, from_config

torch.set_num_threads(2)


@pytest.mark.parametrize("name", MODELS)
@pytest.mark.parametrize("budget,out", [(200_000, 1), (200_000, 3), (16_000, 1)])
def test_budget_within_five_percent(name, budget, out):
    m = build(name, 2, out, params=budget)
    # independent count: walk the tensors (complex numbers are two real parameters)
    n = sum(p.numel() * (2 if p.is_complex() else 1) for p in m.parameters())
    assert n == count_params(m)
    assert abs(n - budget) <= 0.05 * budget


def test_siren_default_matches_paper_count():
    # 2 -> 256 x 3 hidden -> 1 (methods.md: 198,401 parameters)
    assert count_params(build("siren", 2, 1)) == 198_401


@pytest.mark.parametrize("name", MODELS)
def test_rebuild_from_config_gives_identical_outputs(name, tmp_path):
    torch.manual_seed(0)
    m = build(name, 2, 3, params=5_000)
    torch.save(m.state_dict(), tmp_path / "m.pt")
    m2 = from_config(m.config)
    m2.load_state_dict(torch.load(tmp_path / "m.pt", weights_only=True))
    x = torch.rand(64, 2) * 2 - 1
    with torch.no_grad():
        y, y2 = m(x), m2(x)
    assert y.shape == (64, 3) and y.dtype == torch.float32
    assert torch.equal(y, y2)


def test_explicit_widths():
    assert build("siren", 2, 1, hidden=64, hidden_layers=2).config["hidden"] == 64
    m = build("lrnn-spder", 2, 1, rank=32, depth=3, dbar=4, width=2)
    assert len(m.body) == 3 and m.body[0].rank == 32 and m.body[0].is_first and not m.body[1].is_first


def test_errors_name_the_problem():
    with pytest.raises(ValueError, match="unknown model 'nope'"):
        build("nope", 2, 1)
    with pytest.raises(ValueError, match="takes no option .rank."):
        build("siren", 2, 1, rank=4)
    with pytest.raises(ValueError, match="params"):
        build("siren", 2, 1, params=0)


def test_unknown_option_with_budget_is_a_value_error():
    with pytest.raises(ValueError, match="takes no option .rank."):
        build("siren", 2, 1, params=5000, rank=4)
