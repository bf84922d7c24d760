"""The backbone registry: ``model.backbone.name`` -> a builder taking the ``model`` config.

A builder returns a :class:`gn_detect.modeling.contract.Backbone` (``output_shape()``,
``size_divisibility``, ``conv_norm_pairs()``, ``freeze``); ``build_backbone`` checks it. A new
backbone is a function decorated with ``@register_backbone("name")`` in any module imported
before ``build_model``; built-in ones are named here as ``"module:function"`` and imported on
first use (so this module imports no backbone).
"""
from __future__ import annotations

import importlib
from typing import Any, Callable, Union

from gn_detect.modeling.contract import Backbone, check_backbone

__all__ = ["register_backbone", "build_backbone", "backbone_names"]

Builder = Callable[[Any], Backbone]
_BACKBONES: dict[str, Union[str, Builder]] = {"resnet": "gn_detect.modeling.backbone:resnet"}


def register_backbone(name: str) -> Callable[[Builder], Builder]:
    """Decorator: ``builder(model_cfg) -> Backbone`` becomes ``model.backbone.name=name``."""
    def add(builder: Builder) -> Builder:
        if name in _BACKBONES and _BACKBONES[name] is not builder:
            raise ValueError(f"backbone {name!r} is already registered")
        _BACKBONES[name] = builder
        return builder
    return add


def backbone_names() -> tuple[str, ...]:
    return tuple(_BACKBONES)


def _builder(name: str) -> Builder:
    entry = _BACKBONES[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = _BACKBONES[name] = getattr(importlib.import_module(module), attr)
    return entry


def build_backbone(model_cfg: Any) -> Backbone:
    """The backbone named by ``model_cfg.backbone.name`` (``model_cfg``: the merged ``model``
    section), checked against the contract."""
    name = model_cfg.backbone.name
    if name not in _BACKBONES:
        raise ValueError(f"model.backbone.name={name!r} is not a registered backbone; "
                         f"choose one of {', '.join(backbone_names())}")
    return check_backbone(_builder(name)(model_cfg), name)
