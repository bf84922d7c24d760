"""bn with bn_group_size=k against independent BNs, one per group of k images."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from gn_detect.layers import BatchNorm2d, get_norm


def _init(m: nn.BatchNorm2d, gen: torch.Generator) -> None:
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.num_features, generator=gen, dtype=m.weight.dtype))
        m.bias.copy_(torch.randn(m.num_features, generator=gen, dtype=m.bias.dtype))
        m.running_mean.copy_(torch.randn(m.num_features, generator=gen, dtype=m.weight.dtype))
        m.running_var.copy_(torch.rand(m.num_features, generator=gen, dtype=m.weight.dtype) + 0.5)


@pytest.mark.parametrize("momentum", [0.3, None])
def test_ghost_bn_equals_bn_per_group(momentum):
    gen = torch.Generator().manual_seed(0)
    n, k, c = 6, 2, 3
    ghost = get_norm("bn", c, bn_group_size=k, momentum=momentum).double()
    assert isinstance(ghost, BatchNorm2d)
    _init(ghost, gen)
    ref = nn.BatchNorm2d(c, momentum=momentum).double()
    ref.load_state_dict(ghost.state_dict())
    refs = [copy.deepcopy(ref) for _ in range(n // k)]

    for _step in range(2):  # two steps: the running stats must keep agreeing
        x = (torch.randn(n, c, 3, 4, generator=gen, dtype=torch.float64) * 2 + 1).requires_grad_()
        dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        y = ghost(x)
        y.backward(dy)
        x_ref = x.detach().clone().requires_grad_()
        y_ref = torch.cat([r(x_ref[i * k:(i + 1) * k]) for i, r in enumerate(refs)])
        y_ref.backward(dy)
        torch.testing.assert_close(y, y_ref)
        torch.testing.assert_close(x.grad, x_ref.grad)
        torch.testing.assert_close(ghost.weight.grad, sum(r.weight.grad for r in refs))
        torch.testing.assert_close(ghost.bias.grad, sum(r.bias.grad for r in refs))
        # independent BNs' running stats, averaged, then shared again for the next step
        mean_rm = torch.stack([r.running_mean for r in refs]).mean(0)
        mean_rv = torch.stack([r.running_var for r in refs]).mean(0)
        torch.testing.assert_close(ghost.running_mean, mean_rm)
        torch.testing.assert_close(ghost.running_var, mean_rv)
        assert all(int(r.num_batches_tracked) == int(ghost.num_batches_tracked) for r in refs)
        for r in refs:
            r.running_mean.copy_(mean_rm)
            r.running_var.copy_(mean_rv)
            r.weight.grad = r.bias.grad = None
        ghost.weight.grad = ghost.bias.grad = None


def test_ghost_bn_group_equal_to_batch_is_plain_bn_and_eval_uses_running_stats():
    gen = torch.Generator().manual_seed(1)
    m = get_norm("bn", 3, bn_group_size=4).double()
    _init(m, gen)
    ref = nn.BatchNorm2d(3).double()
    ref.load_state_dict(m.state_dict())
    x = torch.randn(4, 3, 2, 2, generator=gen, dtype=torch.float64)
    torch.testing.assert_close(m(x), ref(x))
    torch.testing.assert_close(m.running_var, ref.running_var)
    m.eval(), ref.eval()
    x = torch.randn(6, 3, 2, 2, generator=gen, dtype=torch.float64)  # 6 % 4 != 0 is fine in eval
    torch.testing.assert_close(m(x), ref(x))


def test_indivisible_batch_raises_with_cause_and_fix():
    m = get_norm("bn", 3, bn_group_size=4, layer_name="backbone.stem.norm")
    with pytest.raises(ValueError) as e:
        m(torch.randn(6, 3, 2, 2))
    msg = str(e.value)
    assert "backbone.stem.norm" in msg and "bn_group_size=4" in msg and "6" in msg
    assert "multiple of 4" in msg


@pytest.mark.parametrize("group", [None, 1])
def test_single_value_per_channel_raises_not_nan(group):
    m = get_norm("bn", 3, bn_group_size=group, layer_name="head.p7")
    n = 1 if group is None else 2
    with pytest.raises(ValueError, match="head.p7.*single value per channel"):
        m(torch.randn(n, 3, 1, 1))
    # two values per channel per statistics group are fine
    y = get_norm("bn", 3, bn_group_size=group)(torch.randn(2, 3, 1, 2))
    assert torch.isfinite(y).all()


def test_bad_group_size_rejected():
    with pytest.raises(ValueError, match="positive int"):
        get_norm("bn", 3, bn_group_size=0)
