"""Folding norms into convolutions is exact: the folded copy's head outputs and detections equal
the unfolded eval model's (random norm parameters and running statistics), on the tiny and the
ResNet-18 models; the report names what was folded and what remains."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gn_detect.deploy import HeadNetwork, PerLevelConvAct, fold_model
from gn_detect.deploy.export_check import match_detections
from gn_detect.layers import AffineChannel, GroupNorm
from gn_detect.layers import Conv2d as WSConv2d
from gn_detect.modeling import build_model
from tests.modeling.test_model import tiny_cfg

from ._runs import randomize_norms

REL = 1e-4


def r18_cfg(backbone: str, fpn: str, head: str, ws: bool = False) -> dict:
    """configs/model/retinanet_r18_fpn.yaml with a norm preset's settings (configs/norm/*.yaml)."""
    return {"name": "retinanet_r18_fpn", "backbone": {"depth": "18", "norm": backbone, "ws": ws},
            "fpn": {"norm": fpn, "ws": ws}, "head": {"norm": head, "ws": ws}}


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).abs().max() / a.abs().max())


@torch.no_grad()
def assert_folding_exact(cfg: dict, per_level: str = "duplicate", size: tuple[int, int] = (128, 256)):
    torch.manual_seed(0)
    model = randomize_norms(build_model(cfg, 3)).eval()
    folded, report = fold_model(model, per_level)
    images = torch.rand(2, 3, *size, generator=torch.Generator().manual_seed(2)) * 255  # 0-255 RGB
    sizes = [size, (size[0] - 17, size[1] - 40)]
    for ref, got in zip(HeadNetwork(model)(images), HeadNetwork(folded)(images)):
        assert _rel(ref, got) <= REL
    ref_dets, got_dets = model(images, sizes), folded(images, sizes)
    # near-equal scores may swap places: match by label and box instead of by position
    scale = max(float(d["boxes"].abs().max()) for d in ref_dets)
    agree = match_detections(ref_dets, got_dets, score_thresh=0.05, detections_per_image=100,
                             box_tol=REL * scale, score_tol=1e-5)
    assert agree["matched"] > 10, "the comparison needs detections"
    assert agree["same"] and agree["max_score_diff"] <= REL, agree
    return model, folded, report


TINY = {
    "affine": tiny_cfg("affine", "none", "none"),
    "bn": tiny_cfg("bn", "bn", "bn"),
    "ghost_bn": tiny_cfg("bn", "bn", "bn") | {"norm_opts": {"num_groups": 8, "bn_group_size": 1}},
    "syncbn": tiny_cfg("syncbn", "syncbn", "syncbn"),
    "gn_ws": tiny_cfg("gn_ws", "gn_ws", "gn_ws"),
    "bn_ws_pn": tiny_cfg("bn", "gn", "bn", act="pn_relu") | {"backbone": {"depth": "tiny", "norm": "bn", "ws": True,
                                                                          "widths": [16, 16, 32, 32]}},
    "gn_fpn_head": tiny_cfg("affine", "gn", "gn"),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_folding_is_exact_on_the_tiny_model(name):
    _, folded, report = assert_folding_exact(TINY[name])
    left = [m for m in folded.modules() if isinstance(m, (_BatchNorm, AffineChannel, WSConv2d))]
    assert not left, f"{name}: unfolded {sorted({type(m).__name__ for m in left})}"
    assert not any(p.requires_grad for p in folded.parameters())


@pytest.mark.slow
@pytest.mark.parametrize("preset", ["affine", "bn", "gn_ws"])
def test_folding_is_exact_on_resnet18_fpn(preset):
    cfg = {"affine": r18_cfg("affine", "none", "none"), "bn": r18_cfg("bn", "bn", "bn"),
           "gn_ws": r18_cfg("gn", "gn", "gn", ws=True)}[preset]
    assert_folding_exact(cfg, size=(128, 128))


def test_report_names_folded_and_remaining_layers():
    model, folded, report = assert_folding_exact(tiny_cfg("bn", "gn_ws", "bn"))
    pairs = {(f["conv"], f["norm"]) for f in report.folded}
    assert {("backbone.conv1", "backbone.bn1"), ("backbone.layer1.0.conv2", "backbone.layer1.0.bn2"),
            ("backbone.layer2.0.downsample.0", "backbone.layer2.0.downsample.1"),
            ("head.cls_subnet.0.conv", "head.cls_subnet.0.norm.4")} <= pairs
    assert {d["layer"] for d in report.duplicated} == {f"head.{t}.{i}" for t in ("cls_subnet", "bbox_subnet")
                                                       for i in range(2)}
    assert isinstance(folded.head.cls_subnet[0], PerLevelConvAct) and len(folded.head.cls_subnet[0].convs) == 5
    assert report.standardized == [f"fpn.{k}.{i}.conv" for k in ("lateral", "output") for i in range(3)]
    kept = {k["name"]: k for k in report.kept}
    assert set(kept) == {f"fpn.{k}.{i}.norm" for k in ("lateral", "output") for i in range(3)}
    assert all(k["type"] == "GroupNorm" and "each input" in k["reason"] for k in kept.values())
    assert all(isinstance(folded.get_submodule(n), GroupNorm) for n in kept)
    sd = folded.state_dict()
    assert not any("running_mean" in k for k in sd) and "backbone.conv1.bias" in sd
    assert report.before == {"state_dict_keys": len(model.state_dict()),
                             "parameters": sum(p.numel() for p in model.parameters()),
                             "state_elements": sum(v.numel() for v in model.state_dict().values())}
    assert report.after["state_dict_keys"] == len(sd)
    assert report.after["parameters"] > report.before["parameters"]  # head convs duplicated per level


def test_per_level_keep_leaves_the_head_bn_and_stays_exact():
    _, folded, report = assert_folding_exact(tiny_cfg("bn", "bn", "bn"), per_level="keep")
    kept = {k["name"] for k in report.kept if k["type"] == "BatchNorm2d"}
    assert kept == {f"head.{t}.{i}.norm.{lvl}" for t in ("cls_subnet", "bbox_subnet") for i in range(2)
                    for lvl in range(5)}
    assert not report.duplicated
    assert all(type(folded.get_submodule(n.rsplit(".norm", 1)[0]).conv) is nn.Conv2d for n in kept)


def test_folding_leaves_the_model_unchanged():
    torch.manual_seed(0)
    model = randomize_norms(build_model(tiny_cfg("bn", "gn_ws", "bn"), 3)).train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    fold_model(model)
    assert model.training and all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_unknown_per_level_is_refused():
    with pytest.raises(ValueError, match="duplicate"):
        fold_model(build_model(tiny_cfg(), 3), per_level="merge")
