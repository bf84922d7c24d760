"""torchvision's ``retinanet_resnet50_fpn`` (v1) and ``retinanet_resnet50_fpn_v2`` state dicts in
gn-detect's RetinaNet names, with the settings torchvision builds them with.

v1 and v2 are told apart by the content: v2's head towers hold GroupNorm weights
(``head.classification_head.conv.0.1.weight``) and its P6 conv reads C5 (2048 input channels);
v1's towers are plain convs with biases and its P6 reads P5 (256). A file mixing the two is
refused. Both tower layouts are read: ``conv.{k}.0.*`` (torchvision >= 0.13) and v1's older
``conv.{2k}.*`` (an ``nn.Sequential`` of conv, ReLU), as torchvision's own loader upgrades them.

Name map (docs/weights.md "Whole-detector files"): ``backbone.body.*`` -> ``backbone.*`` (the
ResNet, torchvision layout), ``backbone.fpn.inner_blocks.{i}`` -> ``fpn.lateral.{i}.conv``,
``backbone.fpn.layer_blocks.{i}`` -> ``fpn.output.{i}.conv``, ``backbone.fpn.extra_blocks.p6/p7``
-> ``fpn.p6/p7``, ``head.classification_head.conv.{k}`` -> ``head.cls_subnet.{k}`` (conv, and
norm for v2), ``head.regression_head.conv.{k}`` -> ``head.bbox_subnet.{k}``,
``cls_logits`` -> ``head.cls_score``, ``bbox_reg`` -> ``head.bbox_pred``. torchvision's anchors
are ratio-major within a cell like gn-detect's, so no row is permuted. 91 class rows: row =
COCO category id (``coco_rows("ids")``); another count has unknown names.
"""
from __future__ import annotations

import re
from typing import Any

import torch

from .conventions import TORCHVISION, norm_for
from .detectors import RETINANET_ANCHORS, MappedDetector, coco_rows
from .sources import WeightsError, architecture

__all__ = ["is_torchvision_retinanet", "map_torchvision"]

_FPN = re.compile(r"^backbone\.fpn\.(inner|layer)_blocks\.(\d)\.(?:0\.)?(weight|bias)$")
_EXTRA = re.compile(r"^backbone\.fpn\.extra_blocks\.(p6|p7)\.(weight|bias)$")
_TOWER_NEW = re.compile(r"^head\.(classification|regression)_head\.conv\.(\d+)\.([01])\.(weight|bias)$")
_TOWER_OLD = re.compile(r"^head\.(classification|regression)_head\.conv\.(\d+)\.(weight|bias)$")
_LAST = {"head.classification_head.cls_logits": "head.cls_score", "head.regression_head.bbox_reg": "head.bbox_pred"}
_TOWER = {"classification": "cls_subnet", "regression": "bbox_subnet"}
_FPN_PART = {"inner": "lateral", "layer": "output"}
_ANCHORS_PER_CELL = len(RETINANET_ANCHORS["anchors.scales"]) * len(RETINANET_ANCHORS["anchors.ratios"])
_P6 = "backbone.fpn.extra_blocks.p6.weight"
_LOGITS = "head.classification_head.cls_logits.weight"


def _unwrap(state: dict[str, Any]) -> dict[str, Any]:
    for key in ("model", "state_dict"):
        if isinstance(state.get(key), dict):
            state = state[key]
    return {k.removeprefix("module."): v for k, v in state.items()}


def is_torchvision_retinanet(state: dict[str, Any]) -> bool:
    """True for a (wrapped) torchvision RetinaNet state dict: its class-logit conv and a ResNet body."""
    keys = _unwrap(state)
    return _LOGITS in keys and "backbone.body.conv1.weight" in keys


def _name(key: str) -> str | None:
    """gn-detect's name of a torchvision RetinaNet key (None: not a weight of the detector)."""
    if key.startswith("backbone.body."):
        return None if key.endswith("num_batches_tracked") else "backbone." + key[len("backbone.body."):]
    if m := _FPN.match(key):
        return f"fpn.{_FPN_PART[m.group(1)]}.{m.group(2)}.conv.{m.group(3)}"
    if m := _EXTRA.match(key):
        return f"fpn.{m.group(1)}.{m.group(2)}"
    if m := _TOWER_NEW.match(key):
        part = "conv" if m.group(3) == "0" else "norm"
        return f"head.{_TOWER[m.group(1)]}.{m.group(2)}.{part}.{m.group(4)}"
    if m := _TOWER_OLD.match(key):
        return f"head.{_TOWER[m.group(1)]}.{int(m.group(2)) // 2}.conv.{m.group(3)}"
    for old, new in _LAST.items():
        if key.startswith(old + "."):
            return new + key[len(old):]
    return None


def _version(state: dict[str, torch.Tensor], where: str) -> str:
    gn_head = any(_TOWER_NEW.match(k) and _TOWER_NEW.match(k).group(3) == "1" for k in state)
    p6 = state.get(_P6)
    if p6 is None:
        raise WeightsError(f"{where}: a torchvision RetinaNet without {_P6}", "give a whole retinanet_resnet50_fpn file")
    c5_p6 = int(p6.shape[1]) == 2048
    if gn_head != c5_p6:
        raise WeightsError(f"{where}: a torchvision RetinaNet mixing v1 and v2 layouts (GroupNorm head towers: "
                           f"{gn_head}, P6 from C5: {c5_p6})", "give a retinanet_resnet50_fpn or _v2 file as saved")
    return "torchvision_v2" if gn_head else "torchvision_v1"


def _conventions(version: str, backbone: dict[str, torch.Tensor]) -> dict[str, Any]:
    """What torchvision builds that detector with, as model.-relative keys."""
    arch = architecture(backbone)
    v2 = version == "torchvision_v2"
    conv: dict[str, Any] = {
        "input.format": TORCHVISION["input_format"], "input.pixel_mean": list(TORCHVISION["pixel_mean"]),
        "input.pixel_std": list(TORCHVISION["pixel_std"]), "backbone.stride_in_1x1": TORCHVISION["stride_in_1x1"],
        "backbone.depth": arch["depth"], "backbone.groups": arch["groups"],
        "backbone.width_per_group": arch["width_per_group"], "backbone.widths": None,
        # v1's COCO weights run with FrozenBatchNorm2d at eps 0 (torchvision's overwrite_eps(model, 0.0));
        # v2 keeps BatchNorm2d at 1e-5
        "backbone.norm": norm_for("scale_shift"), "backbone.ws": False, "backbone.norm_opts.eps": 1e-5 if v2 else 0.0,
        "fpn.out_channels": 256, "fpn.norm": "none", "fpn.ws": False,
        "fpn.top_block_in": "c5" if v2 else "p5", "fpn.relu_before_p7": True,
        "head.num_convs": 4, "head.norm": norm_for("group") if v2 else "none", "head.ws": False, "head.act": "relu",
        **RETINANET_ANCHORS, "anchors.style": "torchvision",
        "size_divisibility": 32, "test.clip": "before_nms",
    }
    if v2:  # nn.GroupNorm(32, 256), eps 1e-5, one norm for every level
        conv.update({"head.norm_opts.num_groups": 32, "head.norm_opts.eps": 1e-5, "head.per_level_norm": False})
    return conv


def map_torchvision(state: dict[str, Any], where: str = "torchvision RetinaNet") -> MappedDetector:
    """A torchvision RetinaNet state dict (optionally in ``"model"``/``"state_dict"``, keys
    prefixed ``module.``) in gn-detect's names (module docstring); ``where`` names it in errors."""
    state = _unwrap(state)
    if not is_torchvision_retinanet(state):
        raise WeightsError(f"{where}: not a torchvision RetinaNet ({_LOGITS} and backbone.body.* missing)")
    tensors = {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}
    version = _version(tensors, where)
    md = MappedDetector(version, {}, {}, [])
    md.ignored = [k for k in state if k not in tensors]
    for key, value in tensors.items():
        name = _name(key)
        if name is None:
            md.ignored.append(key)
            continue
        md.state_dict[name] = value
        md.mapped.append((key, name))
    rows = int(tensors[_LOGITS].shape[0]) // _ANCHORS_PER_CELL
    md.class_names = coco_rows("ids") if rows == len(coco_rows("ids")) else [None] * rows
    backbone = {k[len("backbone."):]: v for k, v in md.state_dict.items() if k.startswith("backbone.")}
    md.conventions = _conventions(version, backbone)
    return md
