"""The input conventions that travel with pretrained weights (a file cannot state its own).

Each source has defaults (README "Starting from pretrained weights"); ``model.input.*`` and
``model.backbone.stride_in_1x1`` override them, null meaning "from the weights, else
torchvision's". Pixel values are 0-255, mean and std in the channel order of ``format``.
"""
from __future__ import annotations

from typing import Any

from gn_detect.norms import norm_names, norm_spec

from .sources import SourceWeights, architecture

__all__ = ["TORCHVISION", "INPUT_KEYS", "source_conventions", "norm_for", "file_conventions", "fill_unrecorded"]

# torchvision's and timm's ImageNet models: RGB, mean/std of ImageNet in 0-255.
TORCHVISION: dict[str, Any] = {"input_format": "RGB", "pixel_mean": [123.675, 116.28, 103.53],
                               "pixel_std": [58.395, 57.12, 57.375], "stride_in_1x1": False}
# Caffe2/Detectron models: BGR minus the pixel means detectron2 and mmdetection feed them.
_CAFFE2_MEAN = [103.53, 116.28, 123.675]
_CAFFE2_STD_RESNET = [1.0, 1.0, 1.0]
_CAFFE2_STD_RESNEXT = [57.375, 57.12, 58.395]  # detectron2's setting for FAIR X-101-32x8d
# config key of model.input / model.backbone -> conventions key
INPUT_KEYS = {"format": "input_format", "pixel_mean": "pixel_mean", "pixel_std": "pixel_std"}


def source_conventions(sw: SourceWeights | None) -> dict[str, Any]:
    """input_format, pixel_mean, pixel_std, stride_in_1x1 of a file (torchvision's without one)."""
    if sw is None:
        return dict(TORCHVISION)
    if sw.source == "converted":
        return {k: sw.conventions.get(k, v) for k, v in TORCHVISION.items()}
    caffe2 = sw.source == "detectron" or (sw.source == "detectron2" and sw.author != "torchvision")
    if not caffe2:
        return dict(TORCHVISION)
    resnext = architecture(sw.state_dict)["groups"] > 1
    return {"input_format": "BGR", "pixel_mean": list(_CAFFE2_MEAN),
            "pixel_std": list(_CAFFE2_STD_RESNEXT if resnext else _CAFFE2_STD_RESNET),
            # MSRA ResNets put the stride in the 1x1 conv; GN and ResNeXt files do not
            "stride_in_1x1": not resnext and sw.holds != "group"}


def norm_for(holds: str | None) -> str | None:
    """The first norm of the table whose pretrained weights are ``holds`` (affine, bn, gn)."""
    return next((n for n in norm_names() if norm_spec(n).weights == holds and not norm_spec(n).ws), None)


def file_conventions(sw: SourceWeights, holds: str, num_groups: int | None) -> dict[str, Any]:
    """The ``conventions`` a converted file records (tools/convert_weights.py)."""
    arch = architecture(sw.state_dict)
    norm = norm_for(holds)
    return {**source_conventions(sw), "norm": norm,
            "num_groups": num_groups if norm_spec(norm).groups else None,
            "depth": int(arch["depth"]) if arch["depth"] else None, "groups": arch["groups"],
            "width_per_group": arch["width_per_group"], "source": sw.source}


def fill_unrecorded(config: dict[str, Any]) -> dict[str, Any]:
    """A saved run config on today's schema: conventions it did not record (null) are the ones
    gn-detect fed before they existed, torchvision's. Changes and returns ``config``."""
    model = config.get("model")
    if not isinstance(model, dict):
        return config
    inputs = model.setdefault("input", {})
    for key, conv in INPUT_KEYS.items():
        if inputs.get(key) is None:
            inputs[key] = TORCHVISION[conv]
    backbone = model.setdefault("backbone", {})
    if backbone.get("stride_in_1x1") is None:
        backbone["stride_in_1x1"] = TORCHVISION["stride_in_1x1"]
    return config
