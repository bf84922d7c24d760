"""Whole RetinaNet files (torchvision v1/v2, detectron2, Detectron, gn-detect checkpoints): the
shared record a source's name map fills (``MappedDetector``) and the COCO class rows their
class logits hold.

A source's map takes the file's loaded dict (never runs anything in it) and returns gn-detect
RetinaNet keys (``backbone.*`` in torchvision's ResNet layout, ``fpn.*``, ``head.*``), with the
class-logit and box rows permuted to gn-detect's anchor order (ratio-major within a cell) but
the file's class rows kept as they are; ``conventions`` holds, as ``model.``-relative dotted
keys, the settings its source built that detector with (input format/mean/std,
stride_in_1x1, P6 source, norms, anchor style, padding multiple, clip, eps...).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from typing import Any

import torch

__all__ = ["DETECTOR_SOURCES", "RETINANET_ANCHORS", "MappedDetector", "coco_rows"]

DETECTOR_SOURCES = ("torchvision_v1", "torchvision_v2", "detectron2", "detectron", "gn-detect")

# The anchor set every source's RetinaNet uses (the paper's): 3 scales x 3 ratios per cell over P3-P7
RETINANET_ANCHORS: dict[str, Any] = {
    "anchors.sizes": [32.0, 64.0, 128.0, 256.0, 512.0], "anchors.strides": [8, 16, 32, 64, 128],
    "anchors.scales": [2 ** (k / 3) for k in range(3)], "anchors.ratios": [0.5, 1.0, 2.0], "anchors.offset": 0.0}


@dataclass
class MappedDetector:
    """A detector file in gn-detect's RetinaNet names (module docstring)."""

    source: str                           # one of DETECTOR_SOURCES
    state_dict: dict[str, torch.Tensor]   # gn-detect keys; class rows as in the file
    conventions: dict[str, Any]           # model.-relative dotted key -> the source's setting
    class_names: list[str | None]         # per class-logit row: its COCO name (None: background/unused)
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (file name, gn-detect name)
    ignored: list[str] = field(default_factory=list)


@functools.lru_cache(maxsize=1)
def _coco91() -> tuple[str | None, ...]:
    # torchvision's own record of COCO's 91 ids (index = category id; "__background__"/"N/A": none)
    from torchvision.models.detection import RetinaNet_ResNet50_FPN_Weights  # noqa: PLC0415

    names = RetinaNet_ResNet50_FPN_Weights.COCO_V1.meta["categories"]
    return tuple(None if n in ("__background__", "N/A") else n for n in names)


def coco_rows(layout: str) -> list[str | None]:
    """The COCO name of each class-logit row of a COCO-trained detector: ``"ids"`` (torchvision:
    row = COCO category id, 91 rows) or ``"contiguous"`` (detectron2, Detectron: the 80 classes
    in category-id order)."""
    if layout == "ids":
        return list(_coco91())
    if layout == "contiguous":
        return [n for n in _coco91() if n is not None]
    raise ValueError(f"coco_rows: layout {layout!r} is not 'ids' or 'contiguous'")
