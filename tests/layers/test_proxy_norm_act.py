"""Proxy-normalized ReLU: closed-form proxy moments and their gradients against independent
float64 references (scipy.stats, numeric integration, finite differences); the layer formula;
normalized outputs after GN."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import integrate, stats

from gn_detect.layers import ProxyNormAct, get_activation, get_norm
from gn_detect.layers.activation import relu_gaussian_moments

T_GRID = np.linspace(-6.0, 6.0, 25)  # beta / |gamma|
GAMMAS = (0.1, 0.5, 1.0, 2.0, 5.0, -0.3, -2.0)
RTOL = 1e-9  # measured worst case on this grid: 6e-12 (values and gradients)


def relu_moments_quad(gamma: float, beta: float) -> tuple[float, float]:
    """E and Var of relu(gamma * Y + beta), Y ~ N(0, 1), by numeric integration over the pdf."""
    f1 = lambda y: max(gamma * y + beta, 0.0) * stats.norm.pdf(y)  # noqa: E731
    f2 = lambda y: max(gamma * y + beta, 0.0) ** 2 * stats.norm.pdf(y)  # noqa: E731
    kink = [-beta / gamma] if gamma != 0 else None
    m1 = integrate.quad(f1, -40, 40, points=kink, limit=400, epsabs=0, epsrel=1e-13)[0]
    m2 = integrate.quad(f2, -40, 40, points=kink, limit=400, epsabs=0, epsrel=1e-13)[0]
    return m1, m2 - m1 * m1


def relu_moments_truncnorm(gamma: float, beta: float) -> tuple[float, float]:
    """The same from scipy's truncated normal: relu(Z) is 0 or Z | Z > 0 (total variance)."""
    s = abs(gamma)
    t = beta / s
    mu, var = stats.truncnorm.stats(-t, np.inf, moments="mv")  # Y | Y > -t
    p, q = stats.norm.cdf(t), stats.norm.sf(t)
    return s * p * (t + mu), s * s * (p * var + p * q * (t + mu) ** 2)


def relu_moment_gradients(gamma: float, beta: float) -> tuple[float, float, float, float]:
    """Hand-derived dE/dbeta, dE/dgamma, dVar/dbeta, dVar/dgamma, evaluated with scipy.stats.

    E = s m(t), Var = s^2 v(t), t = beta / s: m' = Phi, v' = 2 m Q, so dE/dbeta = Phi(t),
    dE/ds = phi(t), dVar/dbeta = 2 E Q(t), dVar/ds = 2 s v - 2 beta m Q; d/dgamma = sign * d/ds.
    """
    s, sign = abs(gamma), math.copysign(1.0, gamma)
    t = beta / s
    cdf, sf, pdf = stats.norm.cdf(t), stats.norm.sf(t), stats.norm.pdf(t)
    mean, var = relu_moments_truncnorm(gamma, beta)
    m, v = mean / s, var / (s * s)
    return cdf, sign * pdf, 2 * mean * sf, sign * (2 * s * v - 2 * beta * m * sf)


def _grid() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.tensor([g for _ in T_GRID for g in GAMMAS], dtype=torch.float64)
    b = torch.tensor([t * abs(g) for t in T_GRID for g in GAMMAS], dtype=torch.float64)
    return g, b


def test_moments_match_scipy_truncnorm_on_grid():
    g, b = _grid()
    mean, var = relu_gaussian_moments(g, b)
    ref = np.array([relu_moments_truncnorm(gi, bi) for gi, bi in zip(g.tolist(), b.tolist())])
    np.testing.assert_allclose(mean.numpy(), ref[:, 0], rtol=RTOL, atol=0)
    np.testing.assert_allclose(var.numpy(), ref[:, 1], rtol=RTOL, atol=0)


@pytest.mark.parametrize(
    "gamma,beta",
    [(1.0, 0.0), (2.0, 0.5), (0.5, -1.0), (-1.5, 0.3), (1.0, 2.5), (0.3, -0.2),
     (1.0, -3.0), (0.3, -1.2), (-0.5, -2.0), (0.1, -0.6), (5.0, 30.0)],  # t down to -6, up to 6
)
def test_moments_match_numeric_integration(gamma, beta):
    pn = ProxyNormAct(1).double()
    with torch.no_grad():
        pn.weight.fill_(gamma)
        pn.bias.fill_(beta)
    mean, var = pn.proxy_moments()
    m_ref, v_ref = relu_moments_quad(gamma, beta)
    assert mean.item() == pytest.approx(m_ref, rel=RTOL, abs=0)
    assert var.item() == pytest.approx(v_ref, rel=RTOL, abs=0)


def test_moment_gradients_match_hand_derived_formulas_on_grid():
    g, b = _grid()
    g.requires_grad_()
    b.requires_grad_()
    mean, var = relu_gaussian_moments(g, b)
    # elementwise in (gamma, beta): the gradient of the sum is the per-element derivative
    de_db, de_dg = torch.autograd.grad(mean.sum(), (b, g), retain_graph=True)
    dv_db, dv_dg = torch.autograd.grad(var.sum(), (b, g))
    ref = np.array([relu_moment_gradients(gi, bi) for gi, bi in zip(g.tolist(), b.tolist())])
    for i, got in enumerate((de_db, de_dg, dv_db, dv_dg)):
        np.testing.assert_allclose(got.numpy(), ref[:, i], rtol=RTOL, atol=0)


def test_moments_pass_gradcheck():
    g, b = _grid()
    # include the branch point beta = 0 and both signs of gamma
    g = torch.cat([g[::5], torch.tensor([0.7, -0.7], dtype=torch.float64)]).requires_grad_()
    b = torch.cat([b[::5], torch.zeros(2, dtype=torch.float64)]).requires_grad_()
    assert torch.autograd.gradcheck(relu_gaussian_moments, (g, b))


def test_moments_are_finite_at_gamma_zero_and_far_in_the_tails():
    f64 = {"dtype": torch.float64, "requires_grad": True}
    g = torch.tensor([0.0, 0.0, 0.0, 1.0, 1.0, 1e-3, 1e-3], **f64)
    b = torch.tensor([0.7, -0.7, 0.0, -40.0, 40.0, -0.05, 0.05], **f64)
    mean, var = relu_gaussian_moments(g, b)
    grads = torch.autograd.grad((mean + var).sum(), (g, b))
    assert all(torch.isfinite(x).all() for x in (mean, var, *grads))
    assert (var >= 0).all() and (mean >= 0).all()
    # gamma = 0: relu(beta) is a constant
    relu_beta = torch.tensor([0.7, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(mean[:3], relu_beta, atol=1e-12, rtol=0)
    assert var[:3].max().item() < 1e-20
    # t = +40: relu is the identity almost surely; t = +-50 for gamma = 1e-3
    torch.testing.assert_close(mean[4], torch.tensor(40.0, dtype=torch.float64))
    torch.testing.assert_close(var[[4, 6]], torch.tensor([1.0, 1e-6], dtype=torch.float64))
    assert mean[[3, 5]].max().item() < 1e-300


def test_proxy_moments_closed_form_at_identity():
    mean, var = ProxyNormAct(3).double().proxy_moments()
    # relu(Y): E = 1/sqrt(2 pi), Var = 1/2 - 1/(2 pi)
    full = lambda value: torch.full((3,), value, dtype=torch.float64)  # noqa: E731
    torch.testing.assert_close(mean, full(1 / math.sqrt(2 * math.pi)), rtol=1e-14, atol=0)
    torch.testing.assert_close(var, full(0.5 - 1 / (2 * math.pi)), rtol=1e-14, atol=0)


def test_float32_parameters_get_the_float64_moments_rounded():
    pn = ProxyNormAct(len(GAMMAS))
    with torch.no_grad():
        pn.weight.copy_(torch.tensor(GAMMAS))
        pn.bias.copy_(torch.linspace(-4, 4, len(GAMMAS)))
    mean, var = pn.proxy_moments()
    assert mean.dtype == var.dtype == torch.float32
    ref_mean, ref_var = relu_gaussian_moments(
        pn.weight.detach().double(), pn.bias.detach().double()
    )
    torch.testing.assert_close(mean, ref_mean.float(), rtol=1e-7, atol=0)
    torch.testing.assert_close(var, ref_var.float(), rtol=1e-7, atol=0)


def test_forward_formula():
    gen = torch.Generator().manual_seed(0)
    pn = ProxyNormAct(4).double()
    with torch.no_grad():
        for p in pn.parameters():
            p.copy_(torch.randn(4, generator=gen, dtype=torch.float64))
    x = torch.randn(2, 4, 3, 3, generator=gen, dtype=torch.float64)
    mean, var = relu_gaussian_moments(pn.weight.detach(), pn.bias.detach())
    v = lambda t: t.detach().view(1, -1, 1, 1)  # noqa: E731
    z = torch.relu(v(pn.weight) * x + v(pn.bias))
    ref = v(pn.post_weight) * (z - v(mean)) / torch.sqrt(v(var) + pn.eps) + v(pn.post_bias)
    torch.testing.assert_close(pn(x), ref)
    assert torch.autograd.gradcheck(lambda t: pn(t), (x[:1, :, :2, :2].clone().requires_grad_(),))


def test_only_relu_is_accepted():
    for relu in (F.relu, torch.relu, torch.nn.ReLU()):
        ProxyNormAct(2, relu)
    with pytest.raises(ValueError, match="ReLU only"):
        ProxyNormAct(2, F.gelu)


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
