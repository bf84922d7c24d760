"""RetinaNet classification and box towers: convolutions shared across pyramid levels, norms
shared too except for batch statistics (BN/SyncBN get one norm per level, as in detectron2)."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gn_detect.layers import ConvNormAct
from gn_detect.norms import norm_spec


def uses_per_level_norm(norm: str, per_level_norm: bool | None) -> bool:
    """``per_level_norm`` null: the norm table's ``per_level`` (true for batch-statistics norms:
    P3 and P7 features differ in scale, so one BN shared across levels would mix their statistics;
    detectron2 and torchvision v2 keep BN per level)."""
    if per_level_norm is not None:
        return per_level_norm
    return norm_spec(norm).per_level


class RetinaNetHead(nn.Module):
    """Two towers of ``num_convs`` ConvNormAct layers (``cls_subnet``, ``bbox_subnet``), then the
    class-logit and box-delta convs; every layer is applied to every pyramid level."""

    def __init__(
        self,
        channels: int,
        num_anchors: int,
        num_classes: int,
        *,
        num_convs: int = 4,
        num_levels: int = 5,
        norm: str = "none",
        ws: bool = False,
        act: str = "relu",
        norm_opts: dict[str, Any] | None = None,
        prior_prob: float = 0.01,
        per_level_norm: bool | None = None,
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors
        self.per_level = uses_per_level_norm(norm, per_level_norm)
        levels = num_levels if self.per_level else None

        def tower(name: str) -> nn.ModuleList:
            return nn.ModuleList(
                ConvNormAct(channels, channels, 3, norm=norm, ws=ws or None, act=act, norm_opts=norm_opts,
                            layer_name=f"head.{name}.{i}", num_levels=levels)
                for i in range(num_convs)
            )

        self.cls_subnet = tower("cls_subnet")
        self.bbox_subnet = tower("bbox_subnet")
        self.cls_score = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for layer in (*self.cls_subnet, *self.bbox_subnet):
            nn.init.normal_(layer.conv.weight, std=0.01)
            if layer.conv.bias is not None:
                nn.init.zeros_(layer.conv.bias)
        for conv in (self.cls_score, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # Focal loss paper: start every anchor at foreground probability prior_prob, so the
        # many easy negatives do not swamp the first iterations.
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def _tower(self, tower: nn.ModuleList, x: torch.Tensor, level: int) -> torch.Tensor:
        for layer in tower:
            x = layer(x, level) if self.per_level else layer(x)
        return x

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (B, sum HWA, K) and deltas (B, sum HWA, 4) in anchor order."""
        logits, deltas = [], []
        for lvl, f in enumerate(features):
            logits.append(_flatten(self.cls_score(self._tower(self.cls_subnet, f, lvl)), self.num_classes))
            deltas.append(_flatten(self.bbox_pred(self._tower(self.bbox_subnet, f, lvl)), 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def _flatten(x: torch.Tensor, k: int) -> torch.Tensor:
    # (B, A*K, H, W) -> (B, H*W*A, K): location-major, anchors inner, matching AnchorGenerator.
    b, _, h, w = x.shape
    return x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)
