"""ConvNormAct structure: child names, bias rule, WS / PN wiring."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from gn_detect.layers import AffineChannel, Conv2d, ConvNormAct, ProxyNormAct


@pytest.mark.parametrize("norm", ["none", "affine", "bn", "syncbn", "gn", "gn_ws", "ln", "in"])
def test_children_and_bias_rule(norm):
    m = ConvNormAct(3, 16, 3, stride=2, norm=norm, norm_opts={"num_groups": 4}, layer_name="l")
    assert [n for n, _ in m.named_children()] == ["conv", "norm", "act"]
    assert isinstance(m.conv, Conv2d)
    assert (m.conv.bias is not None) == (norm == "none")
    assert m.conv.ws == (norm == "gn_ws")
    assert m.conv.padding == (1, 1) and m.conv.stride == (2, 2)
    assert all(k.split(".")[0] in ("conv", "norm", "act") for k in m.state_dict())
    assert m(torch.randn(2, 3, 8, 8)).shape == (2, 16, 4, 4)


def test_explicit_bias_and_ws():
    m = ConvNormAct(3, 8, 1, norm="gn", ws=True, bias=True, norm_opts={"num_groups": 2})
    assert m.conv.ws and m.conv.bias is not None and m.conv.padding == (0, 0)
    with pytest.raises(ValueError, match="ws=False"):
        ConvNormAct(3, 8, 1, norm="gn_ws", ws=False)


def test_pn_relu_moves_affine_to_activation():
    m = ConvNormAct(3, 8, 3, norm="gn", act="pn_relu", norm_opts={"num_groups": 2, "affine": True})
    assert isinstance(m.norm, nn.GroupNorm) and m.norm.weight is None
    assert isinstance(m.act, ProxyNormAct)
    with pytest.raises(ValueError, match="pn_relu"):
        ConvNormAct(3, 8, 3, norm="affine", act="pn_relu", layer_name="x")


def test_affine_norm_and_no_act():
    m = ConvNormAct(3, 8, 3, norm="affine", act=None)
    assert isinstance(m.norm, AffineChannel) and isinstance(m.act, nn.Identity)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(m(x), m.conv(x))  # fresh affine is the identity
