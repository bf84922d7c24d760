"""detectron2 and Detectron (Caffe2) RetinaNet files in gn-detect's names: the FPN and head name
maps (the backbone's are sources.py's), the anchor order of their class and box rows, and the
conventions each source built its RetinaNet with (docs/weights.md "Detector name maps: detectron2
and Detectron" says where each comes from).

Both take the file's already loaded dict (numpy arrays or tensors; nothing in it is run). A name
of the FPN or head that the map does not know (a norm, a class-specific box branch, a P2 level)
is refused in one line, so no part of a detector is silently left at its initialization.
"""
from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Callable

import torch

from .conventions import INPUT_KEYS, norm_for, source_conventions
from .detectors import RETINANET_ANCHORS, MappedDetector, coco_rows
from .sources import SourceWeights, WeightsError, _from_caffe2, _from_detectron2, _tensor

__all__ = ["map_detectron2", "map_detectron"]

# Anchors within a cell, in each source's order, as (ratio, scale index); gn-detect's order is
# ratio-major over its ratios (0.5, 1, 2): for ratio: for scale.
_RATIOS, _NUM_SCALES = tuple(RETINANET_ANCHORS["anchors.ratios"]), len(RETINANET_ANCHORS["anchors.scales"])
_D2_CELL = [(r, s) for s in range(_NUM_SCALES) for r in _RATIOS]   # DefaultAnchorGenerator: size-major
_C2_CELL = [(r, s) for s in range(_NUM_SCALES) for r in (1.0, 2.0, 0.5)]   # octave-major, ASPECT_RATIOS (1, 2, 0.5)

# Conventions both sources built their RetinaNets with (model.-relative keys).
_RETINANET = {"fpn.top_block_in": "c5", "fpn.relu_before_p7": True, "fpn.norm": "none", "head.norm": "none",
              "backbone.norm": norm_for("scale_shift"), **RETINANET_ANCHORS}
_D2_CONVENTIONS = {"anchors.style": "exact", "size_divisibility": 32, "test.clip": "after_nms",
                   "backbone.norm_opts.eps": 1e-5}  # FrozenBatchNorm2d's eps, folded into the frozen affine
_C2_CONVENTIONS = {"anchors.style": "detectron", "size_divisibility": 128, "test.clip": "before_nms",
                   "test.score_thresh_per_level": [0.05, 0.05, 0.05, 0.05, 0.0],
                   "input.pixel_mean": [102.9801, 115.9465, 122.7717], "input.pixel_std": [1.0, 1.0, 1.0]}

_D2_FPN = re.compile(r"^backbone\.(?:fpn_(lateral|output)([345])|top_block\.(p[67]))\.(weight|bias)$")
_D2_HEAD = re.compile(r"^head\.(?:(cls|bbox)_subnet\.(\d+)|(cls_score|bbox_pred))\.(weight|bias)$")
_D2_IGNORED = re.compile(r"^(pixel_mean|pixel_std|anchor_generator\..*)$")  # buffers, rebuilt from conventions
_C2_FPN = re.compile(r"^fpn_(?:inner_res([345])_\d+_sum(_lateral)?|res([345])_\d+_sum|([67]))_([wb])$")
_C2_HEAD = re.compile(r"^retnet_(cls|bbox)_(?:conv_n(\d+)|(pred))_fpn3_([wb])$")
_PARAM = {"w": "weight", "b": "bias", "weight": "weight", "bias": "bias"}


def _row_order(source_cell: list[tuple[float, int]]) -> list[int]:
    """For each gn-detect anchor of a cell (ratio-major), the source's index of the same anchor."""
    return [source_cell.index((r, s)) for r in _RATIOS for s in range(_NUM_SCALES)]


def _permuted(tensor: torch.Tensor, order: list[int], what: str, origin: str) -> torch.Tensor:
    a = len(order)
    if tensor.shape[0] % a:
        raise WeightsError(f"{origin}: {what} has {tensor.shape[0]} rows, not a multiple of {a} anchors",
                           "give a RetinaNet with 3 scales x 3 ratios per cell")
    return tensor.reshape(a, tensor.shape[0] // a, *tensor.shape[1:])[order].reshape(tensor.shape)


def _backbone(state: dict[str, Any], read: Callable[[dict[str, Any], SourceWeights], None], source: str,
              holds: tuple[str, str], specific: dict[str, Any], origin: str) -> MappedDetector:
    """The detector record with the backbone of ``state`` read by sources.py's ``read`` (its
    norms must hold ``holds[0]``, described as ``holds[1]``) and the source's conventions."""
    sw = SourceWeights(Path(origin), source, {}, None)
    read(state, sw)
    if not sw.state_dict:
        raise WeightsError(f"{origin}: holds no ResNet backbone weights", "give a whole RetinaNet file")
    if sw.holds != holds[0]:
        raise WeightsError(f"{origin}: the backbone's norms are not {holds[1]}",
                           f"give a {source} RetinaNet with a {holds[1]} ResNet backbone")
    return MappedDetector(source, {f"backbone.{k}": v for k, v in sw.state_dict.items()},
                          _conventions(sw, specific), [], [(f, f"backbone.{t}") for f, t in sw.mapped], sw.ignored)


def _conventions(sw: SourceWeights, specific: dict[str, Any]) -> dict[str, Any]:
    own = source_conventions(sw)  # BGR, Caffe2 mean/std, stride_in_1x1 (MSRA ResNet or not)
    conv = {f"input.{key}": own[name] for key, name in INPUT_KEYS.items()}
    conv["backbone.stride_in_1x1"] = own["stride_in_1x1"]
    return {**conv, **_RETINANET, **specific}


def _class_rows(num_rows: int, anchors: int) -> list[str | None]:
    k = num_rows // anchors
    return coco_rows("contiguous") if k == 80 else [None] * k  # COCO's 80 in id order, else unnamed


def _finish(md: MappedDetector, order: list[int], origin: str) -> MappedDetector:
    """Permutes the class and box rows of ``md`` to gn-detect's anchor order; names its class rows."""
    missing = [k for k in ("head.cls_score.weight", "head.cls_score.bias", "head.bbox_pred.weight",
                           "head.bbox_pred.bias") if k not in md.state_dict]
    if missing:
        raise WeightsError(f"{origin}: a {md.source} file without {', '.join(missing)}",
                           "give a whole RetinaNet file (not a backbone or another detector)")
    for key in ("head.cls_score.weight", "head.cls_score.bias", "head.bbox_pred.weight", "head.bbox_pred.bias"):
        md.state_dict[key] = _permuted(md.state_dict[key], order, key, origin)
    if md.state_dict["head.bbox_pred.bias"].shape[0] != 4 * len(order):
        raise WeightsError(f"{origin}: head.bbox_pred has {md.state_dict['head.bbox_pred.bias'].shape[0]} rows, "
                           f"not 4 per anchor (a class-specific box branch)", "give a class-agnostic RetinaNet")
    md.class_names = _class_rows(md.state_dict["head.cls_score.bias"].shape[0], len(order))
    return md


def _unknown(origin: str, source: str, key: str) -> WeightsError:
    return WeightsError(f"{origin}: {key!r} is an FPN/head weight the {source} map does not know (a norm in the FPN "
                        "or head, or another pyramid)", "give a RetinaNet with P3-P7 and no FPN/head norm")


def map_detectron2(model: dict[str, Any], *, origin: str = "the detectron2 file") -> MappedDetector:
    """A detectron2 RetinaNet's ``"model"`` dict (``backbone.bottom_up.*``, ``backbone.fpn_*``,
    ``backbone.top_block.*``, ``head.*``) in gn-detect's names; ``origin`` names the file in errors."""
    parts = {k: v for k, v in model.items() if str(k).startswith(("backbone.fpn_", "backbone.top_block.", "head."))}
    md = _backbone({k: v for k, v in model.items() if k not in parts}, _from_detectron2, "detectron2",
                   ("batch_stats", "FrozenBN (BN statistics)"), _D2_CONVENTIONS, origin)
    unknown = [k for k in md.ignored if not (k.endswith("num_batches_tracked") or _D2_IGNORED.match(k))]
    if unknown:
        raise WeightsError(f"{origin}: {unknown[0]!r} is not a detectron2 RetinaNet weight", "give a detectron2 "
                           f"RetinaNet file ({len(unknown)} unknown names)")
    for key in ("pixel_mean", "pixel_std"):  # the file's own record of what it was trained with, when it has one
        if (t := _tensor(model.get(key))) is not None and t.numel() == 3:
            md.conventions[f"input.{key}"] = [float(x) for x in t.reshape(-1)]
    convs = _d2_tower_convs(parts)
    md.conventions["head.num_convs"] = len(convs) // 2
    for key, value in parts.items():
        tensor = _tensor(value)
        name = None
        if (m := _D2_FPN.match(key)) and tensor is not None:
            kind, stage, top, param = m.groups()
            name = f"fpn.{top}.{param}" if top else f"fpn.{kind}.{int(stage) - 3}.conv.{param}"
        elif (m := _D2_HEAD.match(key)) and tensor is not None:
            tower, j, out, param = m.groups()
            i = None if out else convs.get((tower, int(j)))
            name = f"head.{out}.{param}" if out else (None if i is None else f"head.{tower}_subnet.{i}.conv.{param}")
        if name is None:
            raise _unknown(origin, "detectron2", key)
        md.state_dict[name] = tensor
        md.mapped.append((key, name))
    return _finish(md, _row_order(_D2_CELL), origin)


def _d2_tower_convs(parts: dict[str, Any]) -> dict[tuple[str, int], int]:
    """(tower, detectron2 Sequential index) -> gn-detect tower index, for the towers' convolutions
    (4-D weights; a Sequential of conv, relu: indices 0, 2, 4, 6)."""
    convs = {}
    for tower in ("cls", "bbox"):
        idx = sorted(int(m.group(2)) for k, v in parts.items() if (m := _D2_HEAD.match(k)) and m.group(1) == tower
                     and m.group(4) == "weight" and getattr(v, "ndim", 0) == 4)
        convs.update({(tower, j): i for i, j in enumerate(idx)})
    return convs


def _c2_name(key: str) -> str | None:
    if m := _C2_FPN.match(key):
        inner, lateral, out, extra, param = m.groups()
        if inner and (inner == "5") == bool(lateral):  # res5's inner is its 1x1 lateral; res3/4 have _lateral
            return None
        name = f"fpn.lateral.{int(inner) - 3}.conv" if inner else (
            f"fpn.output.{int(out) - 3}.conv" if out else f"fpn.p{extra}")
        return f"{name}.{_PARAM[param]}"
    if m := _C2_HEAD.match(key):
        tower, n, pred, param = m.groups()
        part = ("head.cls_score" if tower == "cls" else "head.bbox_pred") if pred else f"head.{tower}_subnet.{n}.conv"
        return f"{part}.{_PARAM[param]}"
    return None


def map_detectron(blobs: dict[str, Any], *, origin: str = "the Detectron file") -> MappedDetector:
    """A Detectron (Caffe2) RetinaNet's blobs (``fpn_inner_*``, ``fpn_res*_sum``, ``fpn_6/7``,
    ``retnet_*_fpn3``; the backbone's ``res*`` names) in gn-detect's names."""
    parts = {k: v for k, v in blobs.items() if str(k).startswith(("fpn_", "retnet_"))
             and not str(k).endswith("_momentum")}  # SGD momenta: the backbone reader ignores them
    md = _backbone({k: v for k, v in blobs.items() if k not in parts}, _from_caffe2, "detectron",
                   ("scale_shift", "fused-BN (_bn_s/_bn_b)"), _C2_CONVENTIONS, origin)
    md.conventions["head.num_convs"] = len({k for k in parts if (m := _C2_HEAD.match(k)) and m.group(2)
                                            and m.group(1) == "cls"}) // 2
    for key, value in parts.items():
        tensor = _tensor(value)
        name = _c2_name(key)
        if name is None or tensor is None:
            raise _unknown(origin, "Detectron", key)
        md.state_dict[name] = tensor
        md.mapped.append((key, name))
    return _finish(md, _row_order(_C2_CELL), origin)
