"""Weight standardization: formula, state-dict compatibility, convert_ws, warnings."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gn_detect.layers import Conv2d, ConvNormAct, convert_ws, norm_layer


def test_ws_weight_zero_mean_unit_biased_variance():
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1, ws=True, bias=True).double()
    with torch.no_grad():
        conv.weight.mul_(5).add_(torch.arange(6, dtype=torch.float64).view(6, 1, 1, 1))
    x = torch.randn(2, 4, 5, 5, dtype=torch.float64)
    w = conv.weight.detach().numpy().reshape(6, -1)
    w_hat = (w - w.mean(1, keepdims=True)) / np.sqrt(w.var(1, keepdims=True) + 1e-5)  # np.var: biased
    np.testing.assert_allclose(w_hat.mean(1), 0, atol=1e-12)
    np.testing.assert_allclose((w_hat ** 2).mean(1), 1, atol=1e-4)
    ref = F.conv2d(x, torch.from_numpy(w_hat.reshape(conv.weight.shape)), conv.bias, padding=1)
    torch.testing.assert_close(conv(x), ref)
    # gradient reaches the raw weight
    conv(x).sum().backward()
    assert conv.weight.grad is not None and torch.isfinite(conv.weight.grad).all()


def test_ws_conv_has_same_state_dict_keys_as_nn_conv():
    assert set(Conv2d(3, 4, 3, ws=True).state_dict()) == set(nn.Conv2d(3, 4, 3).state_dict())
    plain = Conv2d(3, 4, 3, ws=False)
    x = torch.randn(1, 3, 5, 5)
    torch.testing.assert_close(plain(x), F.conv2d(x, plain.weight, plain.bias))


def test_convert_ws_keeps_keys_and_weights():
    model = torchvision.models.resnet18(num_classes=2, norm_layer=norm_layer("gn", num_groups=8))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    params_before = {id(p) for p in model.parameters()}
    n_convs = sum(type(m) is nn.Conv2d for m in model.modules())
    out = convert_ws(model)
    assert out is model
    after = model.state_dict()
    assert list(after) == list(before)
    assert all(torch.equal(before[k], after[k]) for k in before)
    assert {id(p) for p in model.parameters()} == params_before  # optimizer refs stay valid
    ws = [m for m in model.modules() if isinstance(m, Conv2d)]
    assert len(ws) == n_convs and all(m.ws for m in ws)
    assert not any(type(m) is nn.Conv2d for m in model.modules())
    # the stem conv now convolves with the standardized weight
    x = torch.randn(1, 3, 32, 32)
    w = model.conv1.weight.detach().flatten(1)
    w_hat = ((w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) + 1e-5))
    ref = F.conv2d(x, w_hat.view_as(model.conv1.weight), None, stride=2, padding=3)
    torch.testing.assert_close(model.conv1(x), ref, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("norm", ["none", "affine"])
def test_warns_for_ws_without_normalizing_norm(norm):
    with pytest.warns(UserWarning, match="fpn.output.*weight standardization"):
        ConvNormAct(3, 8, 3, norm=norm, ws=True, layer_name="fpn.output")


def test_no_warning_for_gn_ws():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        m = ConvNormAct(3, 8, 3, norm="gn_ws", norm_opts={"num_groups": 4}, layer_name="a")
    assert m.conv.ws
