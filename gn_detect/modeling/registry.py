"""The backbone registry: ``model.backbone.name`` -> a builder taking the ``model`` config.

A backbone module returns a dict of feature maps and exposes ``out_channels`` and ``strides``
(dicts keyed like its output), ``conv_norm_pairs()`` (module names of every conv followed by a
norm, for deploy/fold.py) and ``freeze(freeze_at)`` / ``freeze_at``. A new backbone is a
function decorated with ``@register_backbone("name")`` in any module imported before
``build_model``.
"""
from __future__ import annotations

from typing import Any, Callable

from torch import nn

__all__ = ["register_backbone", "build_backbone", "backbone_names"]

_BACKBONES: dict[str, Callable[[Any], nn.Module]] = {}


def register_backbone(name: str) -> Callable[[Callable[[Any], nn.Module]], Callable[[Any], nn.Module]]:
    """Decorator: ``builder(model_cfg) -> backbone module`` becomes ``model.backbone.name=name``."""
    def add(builder: Callable[[Any], nn.Module]) -> Callable[[Any], nn.Module]:
        if name in _BACKBONES and _BACKBONES[name] is not builder:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = builder
        return builder
    return add


def backbone_names() -> tuple[str, ...]:
    import gn_detect.modeling.backbone  # noqa: F401,PLC0415 - registers the built-in backbones
    return tuple(_BACKBONES)


def build_backbone(model_cfg: Any) -> nn.Module:
    """The backbone named by ``model_cfg.backbone.name`` (``model_cfg``: the merged ``model`` section)."""
    name = model_cfg.backbone.name
    if name not in backbone_names():
        raise ValueError(f"model.backbone.name={name!r} is not a registered backbone; "
                         f"choose one of {', '.join(backbone_names())}")
    return _BACKBONES[name](model_cfg)
