"""Quadratic layers: ReLinear init == conventional layer, the neuron formula, parameter counts."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from inr.layers import QuadraticConv2d, QuadraticLinear

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny tensors: one thread is fastest (conftest)


def n_params(m):
    return sum(p.numel() for p in m.parameters())


def test_relinear_linear_equals_conventional_layer():
    torch.manual_seed(0)
    q = QuadraticLinear(7, 5, dtype=torch.float64)
    lin = nn.Linear(7, 5, dtype=torch.float64)
    with torch.no_grad():
        lin.weight.copy_(q.lin_r.weight)
        lin.bias.copy_(q.lin_r.bias)
    x = torch.randn(64, 7, dtype=torch.float64)
    assert torch.equal(q(x), lin(x))
    assert torch.equal(q.lin_g.weight, torch.zeros(5, 7, dtype=torch.float64))
    assert torch.equal(q.lin_g.bias, torch.ones(5, dtype=torch.float64))
    assert not q.lin_b.weight.any() and not q.lin_b.bias.any()


@pytest.mark.parametrize("compact", [False, True])
def test_relinear_conv_equals_conventional_conv(compact):
    torch.manual_seed(1)
    q = QuadraticConv2d(3, 4, 3, stride=2, padding=1, compact=compact, dtype=torch.float64)
    conv = nn.Conv2d(3, 4, 3, stride=2, padding=1, dtype=torch.float64)
    conv.load_state_dict(q.conv_r.state_dict())
    x = torch.randn(2, 3, 9, 9, dtype=torch.float64)
    assert torch.equal(q(x), conv(x))


def test_linear_matches_the_neuron_formula():
    torch.manual_seed(2)
    for compact in (False, True):
        q = QuadraticLinear(4, 3, compact=compact, relinear=False, dtype=torch.float64)
        x = torch.randn(10, 4, dtype=torch.float64)
        r = x @ q.lin_r.weight.T + q.lin_r.bias
        g = x @ q.lin_g.weight.T + q.lin_g.bias if not compact else 1.0
        ref = r * g + (x * x) @ q.lin_b.weight.T + q.lin_b.bias
        torch.testing.assert_close(q(x), ref, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("compact", [False, True])
def test_conv_matches_patchwise_neurons(compact):
    """Each output pixel is the quadratic neuron applied to its receptive field (unfold = independent path)."""
    torch.manual_seed(3)
    q = QuadraticConv2d(2, 3, 3, padding=1, compact=compact, relinear=False, dtype=torch.float64)
    x = torch.randn(2, 2, 5, 6, dtype=torch.float64)
    patches = F.unfold(x, 3, padding=1).transpose(1, 2)            # (B, L, C*k*k)

    def lin(conv, p):
        return p @ conv.weight.reshape(3, -1).T + conv.bias

    ref = lin(q.conv_r, patches) * (1.0 if compact else lin(q.conv_g, patches)) + lin(q.conv_b, patches ** 2)
    ref = ref.transpose(1, 2).reshape(2, 3, 5, 6)
    torch.testing.assert_close(q(x), ref, rtol=1e-12, atol=1e-12)


def test_parameter_counts_follow_the_paper():
    lin, conv = nn.Linear(12, 7), nn.Conv2d(6, 8, 3)
    assert n_params(QuadraticLinear(12, 7)) == 3 * n_params(lin)
    assert n_params(QuadraticLinear(12, 7, compact=True)) == 2 * n_params(lin)
    assert n_params(QuadraticConv2d(6, 8, 3)) == 3 * n_params(conv)
    assert n_params(QuadraticConv2d(6, 8, 3, compact=True)) == 2 * n_params(conv)
    # bias=False drops b_r and c; b_g stays (ReLinear needs b_g = 1)
    assert n_params(QuadraticLinear(12, 7, bias=False)) == 3 * 12 * 7 + 7
    assert n_params(QuadraticConv2d(6, 8, 3, bias=False, compact=True)) == 2 * 6 * 8 * 9
    assert QuadraticConv2d(6, 8, 3, compact=True).conv_g is None


def test_default_init_when_relinear_is_off():
    torch.manual_seed(4)
    q = QuadraticLinear(50, 40, relinear=False)
    bound = 1 / math.sqrt(50)  # PyTorch's default Linear init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for sub in (q.lin_r, q.lin_g, q.lin_b):
        assert sub.weight.abs().max() <= bound and sub.weight.abs().max() > 0.9 * bound
        assert sub.weight.std() > 0.5 * bound
    assert not torch.allclose(q.lin_g.bias, torch.ones(40))


def test_reset_parameters_restores_relinear_and_repr():
    q = QuadraticConv2d(3, 5, 3, padding=1)
    with torch.no_grad():
        for p in q.parameters():
            p.normal_()
    q.reset_parameters()
    assert torch.equal(q.conv_g.bias, torch.ones(5)) and not q.conv_g.weight.any() and not q.conv_b.weight.any()
    assert "compact=False" in repr(q) and "relinear=True" in repr(q) and "kernel_size=(3, 3)" in repr(q)
    assert "in_features=4, out_features=2" in repr(QuadraticLinear(4, 2))


def test_gradients_against_finite_differences():
    torch.manual_seed(5)
    q = QuadraticLinear(3, 2, relinear=False, dtype=torch.float64)
    x = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: q(t), (x,))
    c = QuadraticConv2d(2, 2, 3, padding=1, compact=True, relinear=False, dtype=torch.float64)
    y = torch.randn(1, 2, 4, 4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda t: c(t), (y,))
