"""The norm table decides fold and fuse (issue 26 item 3): a toy norm registered with
``register_norm`` that is ``foldable`` is folded into the conv before it, one that lists an
activation in ``fused_acts`` applies it itself, one whose entry says neither does neither, and
``resolve_norm`` gives each norm only the options its entry ``takes``; no package file edited."""
from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf
from torch import nn

from gn_detect.config.schema import ModelConfig
from gn_detect.deploy.fold import fold_model
from gn_detect.layers import ConvNormAct, get_norm_act
from gn_detect.modeling import build_model
from gn_detect.norms import NormSpec, register_norm, resolve_norm, unregister_norm


class ChannelAffine(nn.Module):
    """``x * weight[c] + bias[c]``: batch-independent, foldable by its table entry."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 1.5, channels))
        self.bias = nn.Parameter(torch.linspace(-0.2, 0.3, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)

    def fold_scale_shift(self) -> tuple[torch.Tensor, torch.Tensor]:
        return self.weight.detach().double(), self.bias.detach().double()


class RMSNormAct(nn.Module):
    """``x / rms(x) * weight`` over (C, H, W) per sample, with the activation applied in the
    same call when built with ``act="relu"``."""

    def __init__(self, channels: int, act: str | None) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.linspace(0.5, 2.0, channels))
        self.act = act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = x / x.pow(2).mean(dim=(1, 2, 3), keepdim=True).add(1e-6).sqrt() * self.weight.view(1, -1, 1, 1)
        return torch.relu(y) if self.act == "relu" else y


@pytest.fixture
def toy_norms():
    given: dict[str, dict] = {}

    def affine(channels, **opts):
        given["affine"] = opts
        return ChannelAffine(channels)

    def rms(channels, act=None, **opts):
        given["rms"] = opts
        return RMSNormAct(channels, act)

    register_norm("toy_affine", NormSpec(affine, normalizes=False, foldable=True, doc="toy affine"))
    register_norm("toy_affine_kept", NormSpec(affine, normalizes=False, foldable=False, doc="not foldable"))
    register_norm("toy_rms", NormSpec(rms, normalizes=True, fused_acts=("relu",), takes=("eps", "num_groups"),
                                      doc="toy rms"))
    yield given
    for name in ("toy_affine", "toy_affine_kept", "toy_rms"):
        unregister_norm(name)


def _model(**parts):
    cfg = {"backbone": {"depth": "tiny", "norm": "bn"}, "fpn": {"out_channels": 16},
           "anchors": {"sizes": [32, 64, 128, 256, 512]}}
    for part, norm in parts.items():
        cfg.setdefault(part, {})["norm"] = norm
    torch.manual_seed(0)
    return build_model(cfg, num_classes=3).eval()


def test_a_registered_foldable_norm_is_folded_and_a_non_foldable_one_is_not(toy_norms):
    x = torch.randn(1, 3, 128, 128)
    for norm, folds in (("toy_affine", True), ("toy_affine_kept", False)):
        model = _model(fpn=norm)
        folded, report = fold_model(model)
        fpn_folded = [f for f in report.folded if f["conv"].startswith("fpn.")]
        assert len(fpn_folded) == (6 if folds else 0), (norm, report)
        left = [type(m.norm) for m in (*folded.fpn.lateral, *folded.fpn.output)]
        assert left == [nn.Identity if folds else ChannelAffine] * 6
        with torch.no_grad():
            ref, out = model.backbone(x), folded.backbone(x)
            torch.testing.assert_close(folded.fpn(out)[0], model.fpn(ref)[0], rtol=1e-4, atol=1e-5)


def test_a_foldable_entry_without_fold_scale_shift_is_one_line(toy_norms):
    register_norm("toy_plain", NormSpec(lambda c, **_: nn.Identity(), normalizes=False, foldable=True))
    try:
        with pytest.raises(ValueError, match=r"norm 'toy_plain' is foldable in the norm table but its module "
                                             r"Identity has no fold_scale_shift\(\)"):
            fold_model(_model(fpn="toy_plain"))
    finally:
        unregister_norm("toy_plain")


def test_a_registered_norm_fuses_the_activation_its_entry_lists(toy_norms):
    norm, act = get_norm_act("toy_rms", 4, "relu")
    assert isinstance(norm, RMSNormAct) and norm.act == "relu" and isinstance(act, nn.Identity)
    norm, act = get_norm_act("toy_affine", 4, "relu")  # no fused_acts: a separate ReLU
    assert isinstance(norm, ChannelAffine) and isinstance(act, nn.ReLU)

    layer = ConvNormAct(3, 4, 3, norm="toy_rms", act="relu").eval()
    assert isinstance(layer.norm, RMSNormAct) and layer.norm.act == "relu" and isinstance(layer.act, nn.Identity)
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        y = layer.conv(x).numpy().astype("float64")
        w = layer.norm.weight.numpy().astype("float64").reshape(1, -1, 1, 1)
    import numpy as np

    ref = np.maximum(y / np.sqrt((y ** 2).mean(axis=(1, 2, 3), keepdims=True) + 1e-6) * w, 0.0)
    np.testing.assert_allclose(layer(x).detach().numpy(), ref, rtol=1e-5, atol=1e-6)

    model = _model(head="toy_rms")
    subnet = model.head.cls_subnet[0]
    assert isinstance(subnet.norm, RMSNormAct) and subnet.norm.act == "relu"
    assert not any(isinstance(m, nn.ReLU) for m in model.head.modules())


def test_resolve_norm_gives_only_the_options_the_norm_takes(toy_norms):
    model = OmegaConf.merge(OmegaConf.structured(ModelConfig), {
        "norm_opts": {"num_groups": 16, "eps": 1e-3, "bn_group_size": 2},
        "backbone": {"norm": "bn"}, "fpn": {"norm": "gn"}, "head": {"norm": "toy_rms"}})
    assert resolve_norm(model, "backbone").opts == {"eps": 1e-3, "bn_group_size": 2}
    assert resolve_norm(model, "fpn").opts == {"num_groups": 16, "eps": 1e-3, "impl": "auto"}
    assert resolve_norm(model, "head").opts == {"num_groups": 16, "eps": 1e-3}
    build_model(OmegaConf.to_container(model), num_classes=2)
    given = toy_norms["rms"]  # what the toy's builder was given (get_norm adds impl, checked for every norm)
    assert {k: given[k] for k in ("num_groups", "eps")} == {"num_groups": 16, "eps": 1e-3}
    assert "bn_group_size" not in given
