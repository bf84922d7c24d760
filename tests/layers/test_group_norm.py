"""GroupNorm / LN / IN built by get_norm against references written from the formulas."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from gn_detect.layers import get_norm


def gn_forward_np(x, groups, gamma, beta, eps):
    """Wu & He (2018), eq. (1)-(2): per sample and group, biased mean/var over (C/G, H, W)."""
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, c // groups * h * w)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    x_hat = ((xg - mean) / np.sqrt(var + eps)).reshape(n, c, h, w)
    return x_hat * gamma[None, :, None, None] + beta[None, :, None, None]


def gn_backward_np(x, dy, groups, gamma, eps):
    """Closed-form GN backward per group:
    dx = (1/sigma) (dy_hat - mean(dy_hat) - x_hat * mean(dy_hat * x_hat)), dy_hat = dy * gamma."""
    n, c, h, w = x.shape
    xg = x.reshape(n, groups, -1)
    mean = xg.mean(axis=2, keepdims=True)
    var = ((xg - mean) ** 2).mean(axis=2, keepdims=True)
    sigma = np.sqrt(var + eps)
    x_hat = (xg - mean) / sigma
    dy_hat = (dy * gamma[None, :, None, None]).reshape(n, groups, -1)
    dx = (dy_hat - dy_hat.mean(axis=2, keepdims=True)
          - x_hat * (dy_hat * x_hat).mean(axis=2, keepdims=True)) / sigma
    x_hat_full = x_hat.reshape(n, c, h, w)
    dgamma = (dy * x_hat_full).sum(axis=(0, 2, 3))
    dbeta = dy.sum(axis=(0, 2, 3))
    return dx.reshape(n, c, h, w), dgamma, dbeta


def _randomize_affine(m: nn.Module, gen: torch.Generator) -> None:
    with torch.no_grad():
        m.weight.copy_(torch.randn(m.weight.shape, generator=gen, dtype=m.weight.dtype))
        m.bias.copy_(torch.randn(m.bias.shape, generator=gen, dtype=m.bias.dtype))


@pytest.mark.parametrize(
    "name,opts,groups",
    [("gn", {"num_groups": 4}, 4), ("gn", {"channels_per_group": 2}, 4), ("gn", {}, 32),
     ("ln", {}, 1), ("in", {}, 8), ("GN_WS", {"num_groups": 2}, 2)],
)
def test_gn_forward_matches_numpy(name, opts, groups):
    channels = 64 if groups == 32 else 8
    gen = torch.Generator().manual_seed(1)
    m = get_norm(name, channels, eps=1e-5, **opts).double()
    _randomize_affine(m, gen)
    x = torch.randn(2, channels, 5, 3, generator=gen, dtype=torch.float64) * 3 + 2
    ref = gn_forward_np(x.numpy(), groups, m.weight.detach().numpy(), m.bias.detach().numpy(), 1e-5)
    np.testing.assert_allclose(m(x).detach().numpy(), ref, rtol=1e-10, atol=1e-10)


def test_gn_gradcheck():
    gen = torch.Generator().manual_seed(2)
    m = get_norm("gn", 6, num_groups=3).double()
    _randomize_affine(m, gen)
    x = torch.randn(2, 6, 3, 2, generator=gen, dtype=torch.float64, requires_grad=True)

    def f(x, w, b):
        return F.group_norm(x, m.num_groups, w, b, m.eps)

    assert torch.autograd.gradcheck(f, (x, m.weight, m.bias))
    # and the module itself, through its parameters
    assert torch.autograd.gradcheck(lambda x: m(x), (x,))


def test_gn_backward_matches_closed_form():
    gen = torch.Generator().manual_seed(3)
    m = get_norm("gn", 8, num_groups=4).double()
    _randomize_affine(m, gen)
    x = (torch.randn(3, 8, 4, 4, generator=gen, dtype=torch.float64) * 2 - 1).requires_grad_()
    dy = torch.randn(x.shape, generator=gen, dtype=torch.float64)
    m(x).backward(dy)
    dx, dgamma, dbeta = gn_backward_np(x.detach().numpy(), dy.numpy(), 4, m.weight.detach().numpy(), m.eps)
    np.testing.assert_allclose(x.grad.numpy(), dx, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(m.weight.grad.numpy(), dgamma, rtol=1e-9, atol=1e-10)
    np.testing.assert_allclose(m.bias.grad.numpy(), dbeta, rtol=1e-9, atol=1e-10)


def test_ln_is_layer_norm_over_chw():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    plain = get_norm("ln", 6, affine=False).double()
    np.testing.assert_allclose(plain(x).numpy(), F.layer_norm(x, (6, 4, 5), eps=1e-5).numpy(), atol=1e-12)
    m = get_norm("LN", 6).double()
    _randomize_affine(m, gen)
    w = m.weight.detach()[:, None, None].expand(6, 4, 5)
    b = m.bias.detach()[:, None, None].expand(6, 4, 5)
    ref = F.layer_norm(x, (6, 4, 5), w, b, eps=1e-5)
    np.testing.assert_allclose(m(x).detach().numpy(), ref.numpy(), atol=1e-12)


def test_in_is_instance_norm():
    gen = torch.Generator().manual_seed(5)
    x = torch.randn(3, 6, 4, 5, generator=gen, dtype=torch.float64)
    m = get_norm("in", 6).double()
    _randomize_affine(m, gen)
    ref = nn.InstanceNorm2d(6, affine=True).double()
    ref.load_state_dict(m.state_dict())
    np.testing.assert_allclose(m(x).detach().numpy(), ref(x).detach().numpy(), atol=1e-12)


def test_gn_divisibility_error_names_layer_channels_groups():
    with pytest.raises(ValueError) as e:
        get_norm("gn", 48, num_groups=32, layer_name="fpn.lateral3")
    msg = str(e.value)
    assert "fpn.lateral3" in msg and "48" in msg and "32" in msg and "num_groups in" in msg
    with pytest.raises(ValueError, match="channels_per_group=5"):
        get_norm("gn", 48, channels_per_group=5, layer_name="x")
    with pytest.raises(ValueError, match="not both"):
        get_norm("gn", 48, num_groups=4, channels_per_group=12)
    assert get_norm("gn", 48, channels_per_group=12).num_groups == 4
