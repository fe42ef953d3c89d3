"""ReLinear: the sg groups hold exactly the right tensors; sw shrinkage; ReZero."""
import numpy as np
import pytest
import torch
from torch import nn

from approx.relinear import ReZero, ShrinkQuadratic, relinear_groups
from inr.layers import QuadraticConv2d, QuadraticLinear

pytestmark = pytest.mark.usefixtures("torch_one_thread")  # tiny tensors: one thread is fastest (conftest)


class Mixed(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = QuadraticConv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.block = ReZero(QuadraticConv2d(4, 4, 3, padding=1, compact=True))
        self.plain = nn.Conv2d(4, 4, 1)
        self.head = QuadraticLinear(4, 2)

    def forward(self, x):
        x = torch.relu(self.bn(self.conv(x)))
        x = self.plain(self.block(x)).mean((2, 3))
        return self.head(x)


def ids(ts):
    return {id(t) for t in ts}


def test_sg_groups_hold_exactly_the_right_tensors():
    m = Mixed()
    groups = relinear_groups(m, lr=0.1, lr_g=1e-5, lr_b=2e-5, weight_decay=5e-4)
    by = {g["name"]: g for g in groups}
    assert list(by) == ["r", "g", "b", "other"]
    c, b, h = m.conv, m.block.fn, m.head
    expect = {
        "r": [c.conv_r.weight, c.conv_r.bias, b.conv_r.weight, b.conv_r.bias, h.lin_r.weight, h.lin_r.bias],
        "g": [c.conv_g.weight, c.conv_g.bias, h.lin_g.weight, h.lin_g.bias],   # compact block has no g
        "b": [c.conv_b.weight, c.conv_b.bias, b.conv_b.weight, b.conv_b.bias, h.lin_b.weight, h.lin_b.bias],
        "other": [m.bn.weight, m.bn.bias, m.block.alpha, m.plain.weight, m.plain.bias],
    }
    for name, tensors in expect.items():
        assert ids(by[name]["params"]) == ids(tensors), name
        assert len(by[name]["params"]) == len(tensors)
    assert [by[k]["lr"] for k in ("r", "g", "b", "other")] == [0.1, 1e-5, 2e-5, 0.1]
    assert by["r"]["weight_decay"] == by["other"]["weight_decay"] == 5e-4
    assert by["g"]["weight_decay"] == by["b"]["weight_decay"] == 0.0
    # every parameter exactly once
    all_ids = [id(p) for g in groups for p in g["params"]]
    assert sorted(all_ids) == sorted(id(p) for p in m.parameters())
    torch.optim.SGD(groups, lr=0.1, momentum=0.9)  # accepted as optimizer groups


def test_zero_g_and_b_rates_freeze_exactly_those_tensors():
    torch.manual_seed(0)
    m = Mixed()
    with torch.no_grad():
        m.block.alpha.fill_(0.5)  # so the ReZero branch gets gradients too
    frozen = {k: v.clone() for k, v in m.named_parameters() if "_g." in k or "_b." in k}
    moved = {k: v.clone() for k, v in m.named_parameters() if k not in frozen}
    opt = torch.optim.Adam(relinear_groups(m, lr=1e-2, lr_g=0.0, lr_b=0.0))
    m(torch.randn(2, 3, 6, 6)).square().sum().backward()
    opt.step()
    params = dict(m.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in frozen.items())
    assert all(not torch.equal(params[k], v) for k, v in moved.items())


def test_shrink_l1_is_the_soft_threshold_toward_the_reference():
    torch.manual_seed(1)
    q = QuadraticLinear(5, 4, relinear=False)
    before = {k: v.detach().numpy().copy() for k, v in q.named_parameters()}
    ShrinkQuadratic(q, alpha=0.05)(0)
    after = {k: v.detach().numpy() for k, v in q.named_parameters()}

    def soft(v, ref):
        d = v - ref
        return ref + np.where(np.abs(d) > 0.05, d - 0.05 * np.sign(d), 0.0)

    np.testing.assert_allclose(after["lin_g.weight"], soft(before["lin_g.weight"], 0.0), atol=1e-7)
    np.testing.assert_allclose(after["lin_g.bias"], soft(before["lin_g.bias"], 1.0), atol=1e-7)
    np.testing.assert_allclose(after["lin_b.weight"], soft(before["lin_b.weight"], 0.0), atol=1e-7)
    np.testing.assert_allclose(after["lin_b.bias"], soft(before["lin_b.bias"], 0.0), atol=1e-7)
    assert np.array_equal(after["lin_r.weight"], before["lin_r.weight"])
    assert np.array_equal(after["lin_r.bias"], before["lin_r.bias"])


def test_shrink_l2_decays_toward_the_reference_and_skips_other_layers():
    torch.manual_seed(2)
    m = nn.Sequential(QuadraticLinear(3, 3, relinear=False), nn.Linear(3, 1))
    q, lin = m[0], m[1]
    gb, bw, lw = q.lin_g.bias.detach().clone(), q.lin_b.weight.detach().clone(), lin.weight.detach().clone()
    ShrinkQuadratic(m, beta=0.25)(0)
    torch.testing.assert_close(q.lin_g.bias.detach(), 1.0 + 0.75 * (gb - 1.0))
    torch.testing.assert_close(q.lin_b.weight.detach(), 0.75 * bw)
    assert torch.equal(lin.weight.detach(), lw)
    # a ReLinear-initialised layer sits at the reference: shrinkage leaves it there
    r = QuadraticLinear(3, 3)
    state = {k: v.clone() for k, v in r.state_dict().items()}
    ShrinkQuadratic(r, alpha=0.1, beta=0.5)(0)
    assert all(torch.equal(v, r.state_dict()[k]) for k, v in state.items())


def test_rezero_starts_as_identity_and_learns_alpha():
    torch.manual_seed(3)
    f = nn.Linear(4, 4)
    block = ReZero(f)
    x = torch.randn(5, 4)
    assert torch.equal(block(x), x)
    block(x).sum().backward()
    torch.testing.assert_close(block.alpha.grad, f(x).sum().detach())
    assert f.weight.grad is not None and not f.weight.grad.any()  # alpha = 0 blocks F's gradient
