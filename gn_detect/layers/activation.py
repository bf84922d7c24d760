"""Activations: ``relu``, ``none`` and the proxy-normalized ReLU ``pn_relu``.

Proxy Normalization (Labatie et al., "Proxy-Normalizing Activations to Match Batch
Normalization while Removing Batch Dependence", NeurIPS 2021). After a batch-independent norm
without affine (GN / LN) producing y:

    z   = relu(gamma * y + beta)
    out = (z - E[relu(gamma * Y + beta)]) / sqrt(Var[relu(gamma * Y + beta)] + eps)
    out = tilde_gamma * out + tilde_beta,        Y ~ N(0, 1) independently per channel

The proxy moments are per channel and depend only on (gamma, beta), never on the batch. They
are computed in closed form (``relu_gaussian_moments``), in float64 whatever the parameter
dtype, so values and autograd gradients are exact up to rounding. Conventions there:
``s = sqrt(gamma^2 + 1e-24)`` stands for ``|gamma|`` (relu(gamma Y + beta) has the same law for
gamma and -gamma) and keeps ``t = beta / s`` finite at gamma = 0; ``Phi(u) = erfc(-u / sqrt 2)
/ 2`` is the N(0, 1) cdf and ``phi`` its density. (``torch.special.ndtr`` is not used: on CPU
its relative error is 1e-10 at -6 and it returns 0 at -10.)
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from gn_detect.norms import canonical_name

__all__ = ["ProxyNormAct", "get_activation", "ACTIVATIONS", "relu_gaussian_moments"]

ACTIVATIONS = ("relu", "none", "pn_relu")


_INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
_INV_SQRT_2 = 1.0 / math.sqrt(2.0)
# s = sqrt(gamma^2 + _S_FLOOR^2) for |gamma|: the relative change _S_FLOOR^2 / (2 gamma^2) is
# below float64 rounding for |gamma| > 1e-4; at gamma = 0, E = relu(beta) + O(1e-12), Var ~ 1e-24.
_S_FLOOR = 1e-12


def relu_gaussian_moments(
    gamma: torch.Tensor, beta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(E, Var) of relu(gamma * Y + beta), Y ~ N(0, 1), elementwise, in closed form.

    With ``s = |gamma|`` (smoothed, see the module docstring), ``t = beta / s`` and, for the
    N(0, 1) moments of relu(Y + u), ``m(u) = u Phi(u) + phi(u)``, ``e2(u) = (u^2 + 1) Phi(u)
    + u phi(u)``:

        beta <= 0 (u = t):   E = s m(u),         Var = s^2 (e2(u) - m(u)^2)
        beta > 0 (u = -t):   E = beta + s m(u),  Var = s^2 (1 - e2(u) - m(u)^2 + 2 u m(u))

    The second line is the first applied to relu(Z) = Z + relu(-Z), so ``Phi`` is only
    evaluated at ``u <= 0``, where ``erfc`` is accurate to rounding, and large positive ``t``
    neither cancels nor loses the gradient ``dE/dgamma = sign(gamma) phi(t)``. For negative ``t``
    the terms of ``e2 - m^2`` cancel to ``~2 phi(t) / |t|^3`` (relative loss ~t^4 / 2):
    harmless in float64, where everything is computed; results have the dtype of ``gamma``.
    Below ``t = -38`` phi underflows and both moments are 0 (true values below 1e-300).
    Differentiable: autograd through ``erfc`` and ``exp`` gives the exact gradients.
    """
    g, b = gamma.double(), beta.double()
    s = torch.sqrt(g * g + _S_FLOOR**2)
    t = b / s
    positive = b > 0
    u = torch.where(positive, -t, t)  # <= 0; at beta = 0 the t branch keeps dE/dbeta = 1/2
    cdf = 0.5 * torch.special.erfc(-u * _INV_SQRT_2)  # Phi(u)
    pdf = torch.exp(-0.5 * u * u) * _INV_SQRT_2PI
    m = u * cdf + pdf
    e2 = (u * u + 1) * cdf + u * pdf
    mean = torch.where(positive, b, torch.zeros_like(b)) + s * m
    v = torch.where(positive, 1 - e2 - m * m + 2 * u * m, e2 - m * m)
    return mean.to(gamma.dtype), (s * s * v).to(gamma.dtype)


def _is_relu(activation: Callable[[torch.Tensor], torch.Tensor]) -> bool:
    return activation in (F.relu, torch.relu) or isinstance(activation, nn.ReLU)


class ProxyNormAct(nn.Module):
    """ReLU followed by proxy normalization and the post affine (see the module docstring).

    Parameters: ``weight``/``bias`` are gamma/beta (init 1/0); ``post_weight``/``post_bias``
    are tilde gamma/tilde beta (init 1/0, present when ``post_affine``).
    Input must be (N, C, ...) and is assumed normalized per channel (norm built with
    ``affine=False``); the layer then owns the channel affine. ``activation`` must be ReLU
    (``F.relu``, ``torch.relu`` or ``nn.ReLU``): the proxy moments are its closed forms.
    """

    def __init__(
        self,
        channels: int,
        activation: Callable[[torch.Tensor], torch.Tensor] = F.relu,
        *,
        eps: float = 1e-5,
        post_affine: bool = True,
    ) -> None:
        super().__init__()
        if not _is_relu(activation):
            raise ValueError(
                f"ProxyNormAct supports ReLU only (its proxy moments are closed forms for ReLU), "
                f"got {activation!r}"
            )
        self.channels = int(channels)
        self.eps = float(eps)
        self.weight = nn.Parameter(torch.ones(self.channels))
        self.bias = nn.Parameter(torch.zeros(self.channels))
        if post_affine:
            self.post_weight: nn.Parameter | None = nn.Parameter(torch.ones(self.channels))
            self.post_bias: nn.Parameter | None = nn.Parameter(torch.zeros(self.channels))
        else:
            self.register_parameter("post_weight", None)
            self.register_parameter("post_bias", None)

    def extra_repr(self) -> str:
        return (
            f"{self.channels}, activation=relu, eps={self.eps}, "
            f"post_affine={self.post_weight is not None}"
        )

    def proxy_moments(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel (E, Var) of relu(gamma * Y + beta), Y ~ N(0, 1) (closed form)."""
        return relu_gaussian_moments(self.weight, self.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shape = (1, -1) + (1,) * (x.dim() - 2)
        z = F.relu(torch.addcmul(self.bias.view(shape), x, self.weight.view(shape)))
        mean, var = self.proxy_moments()
        # Fold proxy normalization and the post affine into one per-channel scale and shift.
        scale = torch.rsqrt(var + self.eps)
        if self.post_weight is not None:
            scale = scale * self.post_weight
        shift = -mean * scale
        if self.post_bias is not None:
            shift = shift + self.post_bias
        return torch.addcmul(shift.to(z.dtype).view(shape), z, scale.to(z.dtype).view(shape))


def get_activation(name: str | None, channels: int) -> nn.Module:
    """``relu`` -> nn.ReLU(inplace=True), ``none``/""/None -> nn.Identity, ``pn_relu`` ->
    ProxyNormAct(channels, relu)."""
    key = canonical_name(name)
    if key in ("none", ""):
        return nn.Identity()
    if key == "relu":
        return nn.ReLU(inplace=True)
    if key == "pn_relu":
        return ProxyNormAct(channels, F.relu)
    raise ValueError(f"unknown activation {name!r}; valid choices: {', '.join(ACTIVATIONS)}")
