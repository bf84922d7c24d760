"""The backbone's fused GN + ReLU slots: torchvision's keys, torchvision's numbers."""
from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import resnet as tv_resnet

from gn_detect.layers import GroupNormAct
from gn_detect.modeling.backbone import BasicBlock, Bottleneck
from tests.modeling._backbones import backbone


def _torchvision_forward(model, x):
    """The same parameters run by torchvision's own forward (stem, then each block), with the
    fused slots turned back into plain GN (their ReLU then comes from torchvision's code)."""
    fused = [m for m in model.modules() if isinstance(m, GroupNormAct)]
    for m in fused:
        m.act = "none"
    try:
        return _torchvision_blocks(model, x)
    finally:
        for m in fused:
            m.act = "relu"


def _torchvision_blocks(model, x):
    x = model.maxpool(torch.relu(model.bn1(model.conv1(x))))  # our stem act may be the fused Identity
    feats = {}
    for i, layer in enumerate((model.layer1, model.layer2, model.layer3, model.layer4)):
        for block in layer:
            base = tv_resnet.Bottleneck if isinstance(block, Bottleneck) else tv_resnet.BasicBlock
            x = base.forward(block, x)
        feats[f"c{i + 2}"] = x
    return {k: feats[k] for k in ("c3", "c4", "c5")}


@pytest.mark.parametrize("depth,widths,per_block,norm", [
    ("18", (8, 16, 16, 32), 1, "gn"), ("18", (8, 16, 16, 32), 1, "gn_ws"),
    ("50", (8, 8, 16, 16), 2, "gn"), ("50", (8, 8, 16, 16), 2, "ln"),
])
def test_fused_backbone_matches_torchvision_forward_and_keys(depth, widths, per_block, norm):
    torch.manual_seed(0)
    model = backbone(depth, norm=norm, norm_opts={"num_groups": 4}, widths=widths)
    blocks = [m for m in model.modules() if isinstance(m, (BasicBlock, Bottleneck))]
    fused = [m for m in model.modules() if isinstance(m, GroupNormAct)]
    assert len(fused) == 1 + per_block * len(blocks) and all(m.act == "relu" for m in fused)
    ctor = {"18": torchvision.models.resnet18, "50": torchvision.models.resnet50}[depth]
    tv_keys = {k for k in ctor(norm_layer=lambda c: nn.GroupNorm(1, c)).state_dict() if not k.startswith("fc.")}
    if depth == "18":  # same widths as torchvision only for the default; compare key names
        assert set(model.state_dict()) == tv_keys
    else:
        assert {k.split(".", 1)[-1] for k in model.state_dict()} <= {k.split(".", 1)[-1] for k in tv_keys}
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.GroupNorm):
                m.weight.normal_(), m.bias.normal_()  # ReLU must matter: negative values occur
    model.double().train()  # float64: the two forwards sum gradients in different orders
    x = torch.randn(2, 3, 48, 48, dtype=torch.float64, requires_grad=True)
    ours = model(x)
    x_ref = x.detach().clone().requires_grad_()
    ref = _torchvision_forward(model, x_ref)
    for k in ("c3", "c4", "c5"):
        torch.testing.assert_close(ours[k], ref[k], rtol=1e-10, atol=1e-10)
    (sum(v.square().sum() for v in ours.values())).backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    (sum(v.square().sum() for v in ref.values())).backward()
    torch.testing.assert_close(x.grad, x_ref.grad, rtol=1e-9, atol=1e-9)
    for n, p in model.named_parameters():
        torch.testing.assert_close(grads[n], p.grad, rtol=1e-9, atol=1e-9, msg=n)


def test_no_fusion_for_other_norms_and_parameters_are_shared():
    model = backbone("tiny", norm="bn", widths=(8, 8, 16, 16))
    assert not any(isinstance(m, GroupNormAct) for m in model.modules())
    model = backbone("tiny", norm="gn", norm_opts={"num_groups": 4, "impl": "torch"}, widths=(8, 8, 16, 16),
                         freeze_at=1)
    assert isinstance(model.bn1, GroupNormAct) and model.bn1.impl == "torch"
    assert not model.bn1.weight.requires_grad  # frozen after fusion: the stem's GN is the fused one
    assert not model.bn1.training and model.layer1[0].bn1.training
