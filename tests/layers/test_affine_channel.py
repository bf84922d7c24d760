"""AffineChannel against eval-mode BatchNorm, conversions and BN checkpoint loading."""

from __future__ import annotations

import torch
import torchvision
from torch import nn

from gn_detect.layers import AffineChannel, get_norm


def _random_bn(c: int, gen: torch.Generator, dtype=torch.float64) -> nn.BatchNorm2d:
    bn = nn.BatchNorm2d(c, eps=1e-5).to(dtype)
    with torch.no_grad():
        bn.weight.copy_(torch.randn(c, generator=gen, dtype=dtype))
        bn.bias.copy_(torch.randn(c, generator=gen, dtype=dtype))
        bn.running_mean.copy_(torch.randn(c, generator=gen, dtype=dtype))
        bn.running_var.copy_(torch.rand(c, generator=gen, dtype=dtype) * 3 + 0.1)
    return bn.eval()


def test_equals_eval_batchnorm():
    gen = torch.Generator().manual_seed(0)
    bn = _random_bn(5, gen)
    x = torch.randn(2, 5, 3, 4, generator=gen, dtype=torch.float64)
    aff = AffineChannel.from_batchnorm(bn).double()
    torch.testing.assert_close(aff(x), bn(x), rtol=1e-12, atol=1e-12)


def test_fresh_is_exact_identity_and_frozen():
    a = get_norm("affine", 4)
    assert isinstance(a, AffineChannel)
    x = torch.randn(3, 4, 5, 5) * 1e3
    assert torch.equal(a(x), x)
    assert list(a.parameters()) == []
    assert sorted(a.state_dict()) == ["bias", "weight"]
    assert not a.weight.requires_grad and not a.bias.requires_grad
    a.train()
    assert torch.equal(a(x), x)  # no statistics, train mode changes nothing


def test_trainable_variant_has_parameters_with_grads():
    a = get_norm("affine", 4, trainable=True)
    assert {n for n, _ in a.named_parameters()} == {"weight", "bias"}
    a(torch.randn(2, 4, 3, 3)).sum().backward()
    assert a.weight.grad is not None and a.bias.grad is not None
    assert sorted(a.state_dict()) == ["bias", "weight"]


def test_loads_batchnorm_state_dict_directly():
    gen = torch.Generator().manual_seed(1)
    bn_model = nn.Sequential(nn.Conv2d(3, 4, 3), _random_bn(4, gen, torch.float32)).eval()
    sd = bn_model.state_dict()
    assert "1.running_var" in sd and "1.num_batches_tracked" in sd
    for trainable in (False, True):
        aff_model = nn.Sequential(nn.Conv2d(3, 4, 3), get_norm("affine", 4, trainable=trainable))
        result = aff_model.load_state_dict(sd, strict=True)
        assert not result.missing_keys and not result.unexpected_keys
        x = torch.randn(2, 3, 6, 6, generator=gen)
        torch.testing.assert_close(aff_model(x), bn_model(x), rtol=1e-5, atol=1e-5)
    # its own state dict loads back as is
    again = AffineChannel(4)
    again.load_state_dict(aff_model[1].state_dict())
    torch.testing.assert_close(again.weight, aff_model[1].weight.detach())


def test_torchvision_resnet_checkpoint_loads_into_affine_backbone():
    gen = torch.Generator().manual_seed(2)
    ref = torchvision.models.resnet18(num_classes=3)
    for m in ref.modules():
        if isinstance(m, nn.BatchNorm2d):
            with torch.no_grad():
                m.weight.uniform_(0.5, 1.5, generator=gen)
                m.bias.normal_(0, 0.1, generator=gen)
                m.running_mean.normal_(0, 0.1, generator=gen)
                m.running_var.uniform_(0.5, 2.0, generator=gen)
    ref.eval()
    aff = torchvision.models.resnet18(num_classes=3, norm_layer=lambda c: get_norm("affine", c))
    aff.load_state_dict(ref.state_dict(), strict=True)
    assert set(aff.state_dict()) < set(ref.state_dict())  # same names, minus the BN statistics
    x = torch.randn(1, 3, 64, 64, generator=gen)
    with torch.no_grad():
        torch.testing.assert_close(aff(x), ref(x), rtol=1e-4, atol=1e-4)
