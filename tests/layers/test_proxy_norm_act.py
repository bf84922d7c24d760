"""Proxy-normalized ReLU: quantile moments vs numeric integration; normalization of outputs."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from gn_detect.layers import ProxyNormAct, get_activation, get_norm


def relu_moments_quad(gamma: float, beta: float) -> tuple[float, float]:
    """E and Var of relu(gamma * Y + beta), Y ~ N(0, 1), by numeric integration over the pdf."""
    f1 = lambda y: max(gamma * y + beta, 0.0) * stats.norm.pdf(y)  # noqa: E731
    f2 = lambda y: max(gamma * y + beta, 0.0) ** 2 * stats.norm.pdf(y)  # noqa: E731
    kink = [-beta / gamma] if gamma != 0 else None
    m1 = integrate.quad(f1, -12, 12, points=kink, limit=200)[0]
    m2 = integrate.quad(f2, -12, 12, points=kink, limit=200)[0]
    return m1, m2 - m1 * m1


@pytest.mark.parametrize(
    "gamma,beta",
    [(1.0, 0.0), (2.0, 0.5), (0.5, -1.0), (-1.5, 0.3), (1.0, 2.5), (0.3, -0.2),
     (1.0, -3.0), (0.3, -1.2), (-0.5, -2.0)],  # the last three: active only beyond 3-4 sigma
)
def test_proxy_moments_match_numeric_integration(gamma, beta):
    pn = ProxyNormAct(1).double()
    with torch.no_grad():
        pn.weight.fill_(gamma)
        pn.bias.fill_(beta)
    mean, var = pn.proxy_moments()
    m_ref, v_ref = relu_moments_quad(gamma, beta)
    assert mean.item() == pytest.approx(m_ref, rel=5e-3, abs=1e-9)
    assert var.item() == pytest.approx(v_ref, rel=5e-3, abs=1e-9)


def test_proxy_moments_closed_form_at_identity():
    mean, var = ProxyNormAct(3).double().proxy_moments()
    # relu(Y): E = 1/sqrt(2 pi), Var = 1/2 - 1/(2 pi)
    torch.testing.assert_close(mean, torch.full((3,), 1 / math.sqrt(2 * math.pi), dtype=torch.float64),
                               rtol=1e-3, atol=0)
    torch.testing.assert_close(var, torch.full((3,), 0.5 - 1 / (2 * math.pi), dtype=torch.float64),
                               rtol=1e-3, atol=0)


def test_forward_formula():
    gen = torch.Generator().manual_seed(0)
    pn = ProxyNormAct(4).double()
    with torch.no_grad():
        for p in pn.parameters():
            p.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    mean, var = pn.proxy_moments()
    v = lambda t: t.detach().view(1, -1, 1, 1)  # noqa: E731
    z = torch.relu(v(pn.weight) * x + v(pn.bias))
    ref = v(pn.post_weight) * (z - v(mean)) / torch.sqrt(v(var) + pn.eps) + v(pn.post_bias)
    torch.testing.assert_close(pn(x), ref)
    assert torch.autograd.gradcheck(lambda t: pn(t), (x[:1, :, :2, :2].clone().requires_grad_(),))


def test_gn_then_pn_relu_output_is_normalized_per_channel():
    gen = torch.Generator().manual_seed(1)
    c = 8
    norm = get_norm("gn", c, num_groups=4, affine=False).double()
    act = get_activation("pn_relu", c).double()
    assert isinstance(act, ProxyNormAct)
    # any (gamma, beta) must give a normalized output; keep beta/gamma >= -1 so that at least
    # 16% of the samples are active and the sample variance is accurate to ~1.5% here.
    with torch.no_grad():
        act.weight.copy_(torch.rand(c, generator=gen, dtype=torch.float64) * 1.5 + 0.5)
        act.bias.copy_(torch.rand(c, generator=gen, dtype=torch.float64) * 1.5 - 0.5)
    x = torch.randn(32, c, 32, 32, generator=gen, dtype=torch.float64) * 3 + 1
    out = act(norm(x))
    ch_mean = out.mean(dim=(0, 2, 3)).detach().numpy()
    ch_var = out.var(dim=(0, 2, 3)).detach().numpy()
    np.testing.assert_allclose(ch_mean, 0, atol=0.02)
    np.testing.assert_allclose(ch_var, 1, atol=0.05)
    # without the proxy normalization (plain relu) it is far from that: the test can fail
    raw = torch.relu(norm(x))
    assert abs(raw.mean().item()) > 0.3


def test_unknown_activation():
    with pytest.raises(ValueError, match="pn_relu"):
        get_activation("gelu", 4)
