"""Backbones built the way build_model builds them: from a ``model.backbone`` section on the schema."""
from __future__ import annotations

from typing import Any

from gn_detect.modeling.builder import model_config
from gn_detect.modeling.registry import build_backbone


def backbone(depth: Any, norm: str, *, norm_opts: dict | None = None, widths=None, freeze_at: int = 0,
             **more: Any):
    """``build_backbone`` for ``model.backbone`` = these keys (``freeze_at`` 0 unless given)."""
    bb = {"depth": str(depth), "norm": norm, "freeze_at": freeze_at, **more}
    if widths is not None:
        bb["widths"] = list(widths)
    return build_backbone(model_config({"backbone": bb, "norm_opts": norm_opts or {}}))
