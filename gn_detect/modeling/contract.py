"""The backbone contract in code (detectron2's ``Backbone``): what every backbone module gives.

A backbone subclasses :class:`Backbone`: ``forward(x)`` returns a dict of feature maps keyed by
name, ``output_shape()`` gives each name's channels and stride (a :class:`ShapeSpec`),
``size_divisibility`` the multiple its input sides must be padded to (its deepest stride by
default), ``conv_norm_pairs()`` the ``(conv, norm)`` module names deploy/fold.py folds, and
``freeze(freeze_at)`` / ``freeze_at``. ``build_backbone`` (registry.py) checks the contract.

:func:`size_divisibility` is the model's padding multiple, the one function the model
(build_model) and the data loaders, export and predict ask.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from torch import nn

__all__ = ["Backbone", "ShapeSpec", "check_backbone", "size_divisibility"]


@dataclass(frozen=True)
class ShapeSpec:
    """One output feature of a backbone: its channel count and stride (input pixels per cell)."""

    channels: int
    stride: int


class Backbone(nn.Module):
    """Base class of every backbone (module docstring). Subclasses set ``out_channels`` and
    ``strides`` (dicts keyed like ``forward``'s output) or override ``output_shape()``."""

    out_channels: dict[str, int]
    strides: dict[str, int]
    freeze_at: int = 0

    def output_shape(self) -> dict[str, ShapeSpec]:
        """Channels and stride per output feature name, shallowest first."""
        shapes = {k: ShapeSpec(int(self.out_channels[k]), int(self.strides[k])) for k in self.out_channels}
        return dict(sorted(shapes.items(), key=lambda kv: kv[1].stride))

    @property
    def size_divisibility(self) -> int:
        """Input sides must be a multiple of this for every feature map to divide evenly."""
        return max(s.stride for s in self.output_shape().values())

    def conv_norm_pairs(self) -> list[tuple[str, str]]:
        """``(conv, norm)`` module names (relative to this module) of every conv -> norm pair."""
        return []

    def freeze(self, freeze_at: int) -> None:
        self.freeze_at = freeze_at


def check_backbone(module: Any, name: str) -> Backbone:
    """``module`` if it keeps the contract; ValueError naming what is missing otherwise."""
    where = f"backbone {name!r}"
    if not isinstance(module, Backbone):
        raise ValueError(f"{where}: its builder returned a {type(module).__name__}, not a "
                         "gn_detect.modeling.contract.Backbone; subclass Backbone (output_shape, size_divisibility)")
    shapes = module.output_shape()
    if not shapes or not all(isinstance(s, ShapeSpec) and s.channels > 0 and s.stride > 0 for s in shapes.values()):
        raise ValueError(f"{where}: output_shape() must map each feature name to a ShapeSpec with positive "
                         f"channels and stride, got {shapes!r}")
    if int(module.size_divisibility) < 1:
        raise ValueError(f"{where}: size_divisibility={module.size_divisibility!r} must be a positive integer")
    return module


def size_divisibility(model: Any) -> int:
    """The padding multiple of a model config (the ``model`` section): ``model.size_divisibility``
    when set (32: detectron2's, torchvision's and mmdetection's), else the deepest pyramid stride
    (P7 of ``model.anchors.strides``, 128 by default), so every level's feature map divides evenly
    and a padded image's anchors do not depend on how much padding its batch got. build_model
    checks that it is a multiple of the backbone's own ``size_divisibility``."""
    given = model.get("size_divisibility") if hasattr(model, "get") else None
    return int(given) if given is not None else int(max(model["anchors"]["strides"]))
