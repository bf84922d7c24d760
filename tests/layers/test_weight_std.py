"""Weight standardization: formula, state-dict compatibility, convert_ws, warnings, cache."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn

from gn_detect.layers import Conv2d, ConvNormAct, convert_ws, get_norm, ws_forward_cache
from gn_detect.layers import conv as conv_module


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
    model = torchvision.models.resnet18(num_classes=2, norm_layer=lambda c: get_norm("gn", c, num_groups=8))
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


# ----------------------------------------------------------------- standardized-weight cache


def _ws_ref(conv: nn.Conv2d) -> torch.Tensor:
    w = conv.weight.detach().double().flatten(1)
    w_hat = (w - w.mean(1, keepdim=True)) / torch.sqrt(w.var(1, unbiased=False, keepdim=True) + 1e-5)
    return w_hat.view_as(conv.weight)


@pytest.fixture
def count_standardize(monkeypatch):
    calls = []
    real = conv_module.standardize_weight

    def counting(weight, eps=1e-5):
        calls.append(weight.dtype)
        return real(weight, eps)

    monkeypatch.setattr(conv_module, "standardize_weight", counting)
    return calls


def _expected(conv: Conv2d, x: torch.Tensor) -> torch.Tensor:
    return F.conv2d(x.double(), _ws_ref(conv), conv.bias.detach().double(), padding=1).float()


def test_ws_cache_reused_in_eval_and_invalidated_by_optimizer_step(count_standardize):
    torch.manual_seed(0)
    conv = Conv2d(4, 6, 3, padding=1, ws=True)
    x = torch.randn(2, 4, 5, 5)
    opt = torch.optim.SGD(conv.parameters(), lr=0.5)
    conv.eval()
    with torch.no_grad():
        y1, y2 = conv(x), conv(x)
    assert len(count_standardize) == 1  # the second call used the cache
    torch.testing.assert_close(y1, _expected(conv, x), rtol=1e-5, atol=1e-5)
    assert torch.equal(y1, y2)
    conv.train()
    conv(x).square().sum().backward()
    opt.step()  # in-place update: weight._version changes
    conv.eval()
    with torch.no_grad():
        y3 = conv(x)
        conv(x)
    assert len(count_standardize) == 3  # train call + one recompute after the step
    torch.testing.assert_close(y3, _expected(conv, x), rtol=1e-5, atol=1e-5)
    assert not torch.allclose(y3, y1)


def test_ws_cache_invalidated_by_load_state_dict_and_new_parameter(count_standardize):
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, padding=1, ws=True).eval()
    other = Conv2d(3, 4, 3, padding=1, ws=True)
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        conv(x)
        conv.load_state_dict(other.state_dict())
        torch.testing.assert_close(conv(x), _expected(other, x), rtol=1e-5, atol=1e-5)
        conv.weight = nn.Parameter(torch.randn_like(conv.weight))
        torch.testing.assert_close(conv(x), _expected(conv, x), rtol=1e-5, atol=1e-5)
    assert len(count_standardize) == 3


def test_ws_cache_never_used_in_training_or_when_the_weight_needs_grad(count_standardize):
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, padding=1, ws=True, bias=False)
    x = torch.randn(1, 3, 6, 6)
    for _ in range(2):  # training mode: recomputed each call, gradients reach the weight
        conv.weight.grad = None
        conv(x).sum().backward()
    assert len(count_standardize) == 2
    w = conv.weight.detach().double().requires_grad_()
    mean, var = w.flatten(1).mean(1), w.flatten(1).var(1, unbiased=False)
    w_hat = (w - mean.view(-1, 1, 1, 1)) / torch.sqrt(var.view(-1, 1, 1, 1) + 1e-5)
    F.conv2d(x.double(), w_hat, padding=1).sum().backward()
    torch.testing.assert_close(conv.weight.grad.double(), w.grad, rtol=1e-4, atol=1e-6)
    conv.eval()  # eval with grad enabled and a trainable weight: no cache either
    conv(x).sum().backward()
    conv(x).sum().backward()
    assert len(count_standardize) == 4 and conv._ws_cache is None


def test_ws_weight_in_the_autocast_dtype_standardized_in_fp32(count_standardize):
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, padding=1, ws=True).eval()
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        w_hat = conv.ws_weight(x)
        y = conv(x)
        conv(x)
    assert w_hat.dtype == torch.bfloat16 and count_standardize == [torch.float32]
    torch.testing.assert_close(w_hat.double(), _ws_ref(conv), rtol=2**-8, atol=2**-8)
    assert y.dtype == torch.bfloat16
    with torch.no_grad():  # leaving autocast: the fp32 weight is recomputed, not the bf16 one
        assert conv(x).dtype == torch.float32
    assert len(count_standardize) == 2


def test_ws_conv_pickles_without_its_cache():
    conv = Conv2d(3, 4, 3, ws=True).eval()
    with torch.no_grad():
        conv(torch.randn(1, 3, 5, 5))
    assert conv._ws_cache is not None
    clone = pickle.loads(pickle.dumps(conv))
    assert clone._ws_cache is None and torch.equal(clone.weight, conv.weight)


def test_ws_forward_cache_standardizes_once_per_forward_in_training(count_standardize):
    torch.manual_seed(0)
    conv = Conv2d(3, 4, 3, padding=1, ws=True).double().train()  # float64: exact comparison
    levels = [torch.randn(1, 3, s, s, dtype=torch.float64) for s in (8, 4, 2)]  # one conv, 3 levels
    opt = torch.optim.SGD(conv.parameters(), lr=0.1)
    for step in range(2):
        with ws_forward_cache():
            loss = sum(conv(f).square().sum() for f in levels)
        assert len(count_standardize) == 4 * step + 1  # once per forward, not once per call
        opt.zero_grad()
        loss.backward()  # after the block: the graph still holds the shared W_hat
        memo_grad = conv.weight.grad.clone()
        opt.zero_grad()
        sum(conv(f).square().sum() for f in levels).backward()  # no memo: three standardizations
        torch.testing.assert_close(memo_grad, conv.weight.grad, rtol=1e-10, atol=1e-10)
        opt.step()  # the next forward sees a new weight (new _version)
    assert len(count_standardize) == 8
    opt.zero_grad()
    with ws_forward_cache():
        with torch.no_grad():  # W_hat without a graph: not reused once grad is enabled again
            conv(levels[0])
        conv(levels[0]).sum().backward()
    assert len(count_standardize) == 10 and conv.weight.grad is not None
