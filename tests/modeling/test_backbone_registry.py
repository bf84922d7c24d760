"""The backbone contract: looked up by model.backbone.name, out_channels/strides, conv_norm_pairs."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from gn_detect.modeling import Backbone, ShapeSpec, build_model
from gn_detect.modeling.registry import _BACKBONES, backbone_names, register_backbone
from tests.modeling._backbones import backbone


def test_unknown_backbone_name_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"model.backbone.name='vgg'.*resnet"):
        build_model({"backbone": {"name": "vgg"}}, num_classes=2)
    assert "resnet" in backbone_names()


def test_resnet_contract_matches_its_outputs_and_modules():
    model = backbone(50, "bn", widths=(8, 8, 16, 16)).eval()
    x = torch.randn(1, 3, 64, 96)
    out = model(x)
    assert set(out) == set(model.out_channels) == set(model.strides)
    for k, f in out.items():
        assert f.shape[1] == model.out_channels[k]
        assert (64 // f.shape[2], 96 // f.shape[3]) == (model.strides[k],) * 2
    pairs = model.conv_norm_pairs()
    mods = dict(model.named_modules())
    convs = {n for n, m in mods.items() if isinstance(m, nn.Conv2d)}
    assert {c for c, _ in pairs} == convs  # every conv of the ResNet is followed by a norm
    assert all(isinstance(mods[n], nn.BatchNorm2d) for _, n in pairs)
    assert ("layer1.0.downsample.0", "layer1.0.downsample.1") in pairs


def test_a_registered_backbone_builds_into_a_retinanet():
    @register_backbone("toy")
    def toy(model_cfg):
        class Toy(Backbone):
            out_channels = {"p": 8, "q": 8, "r": 8}  # any names: the FPN reads output_shape()
            strides = {"p": 8, "q": 16, "r": 32}

            def __init__(self):
                super().__init__()
                self.c3, self.c4, self.c5 = (nn.Conv2d(3 if s == 8 else 8, 8, 3, stride=s if s == 8 else 2,
                                                       padding=1) for s in (8, 16, 32))

            def forward(self, x):
                c3 = self.c3(x)
                c4 = self.c4(c3)
                return {"p": c3, "q": c4, "r": self.c5(c4)}
        return Toy()

    try:
        model = build_model({"backbone": {"name": "toy"}, "fpn": {"out_channels": 16}}, num_classes=2).eval()
        with torch.no_grad():
            dets = model(torch.randn(1, 3, 128, 128))
        assert len(dets) == 1 and set(dets[0]) == {"boxes", "scores", "labels"}
        assert model.fpn.in_features == ("p", "q", "r") and model.size_divisibility == 128
    finally:
        _BACKBONES.pop("toy", None)


def test_build_backbone_refuses_a_module_outside_the_contract():
    @register_backbone("plain")
    def plain(model_cfg):
        return nn.Conv2d(3, 8, 3)

    try:
        with pytest.raises(ValueError, match=r"backbone 'plain'.*not a gn_detect.modeling.contract.Backbone"):
            build_model({"backbone": {"name": "plain"}}, num_classes=2)
    finally:
        _BACKBONES.pop("plain", None)


def test_the_padding_multiple_must_fit_the_backbone_strides():
    class Deep(Backbone):
        out_channels = {"a": 4, "b": 4, "c": 4}
        strides = {"a": 8, "b": 16, "c": 64}

    assert Deep().output_shape()["c"] == ShapeSpec(4, 64) and Deep().size_divisibility == 64

    @register_backbone("deep")
    def deep(model_cfg):
        return Deep()

    try:
        with pytest.raises(ValueError, match=r"padding multiple 32 is not a multiple of the backbone's size_divisibility 64"):
            build_model({"backbone": {"name": "deep"}, "anchors": {"strides": [8, 16, 32], "sizes": [32, 64, 128]}},
                        num_classes=2)
    finally:
        _BACKBONES.pop("deep", None)
