"""RetinaNet classification and box towers with convolutions shared across pyramid levels."""
from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from gn_detect.layers import Conv2d, get_activation, get_norm, split_norm_name


class LevelConvNormAct(nn.Module):
    """A conv shared by all pyramid levels followed by a norm and activation per level.

    Norms are per level for every norm type: a BN shared across levels mixes the statistics of
    P3 and P7 features, which differ in scale (the reason detectron2 keeps BN per level). Doing
    the same for GN/affine keeps state-dict keys independent of the norm type, at the cost of
    a few extra affine parameters.
    """

    def __init__(
        self,
        channels: int,
        num_levels: int,
        *,
        norm: str,
        ws: bool,
        act: str,
        norm_opts: dict[str, Any] | None,
        layer_name: str,
    ) -> None:
        super().__init__()
        norm_name, implied_ws = split_norm_name(norm)
        has_norm = norm_name != "none"
        self.conv = Conv2d(channels, channels, 3, padding=1, bias=not has_norm, ws=ws or implied_ws)
        # The proxy-normalized activation owns the affine, so the norm before it has none.
        affine = not str(act).lower().startswith("pn_")
        self.norm = nn.ModuleList(
            get_norm(norm_name, channels, layer_name=f"{layer_name}.norm.{lvl}", affine=affine, **(norm_opts or {}))
            for lvl in range(num_levels)
        )
        self.act = nn.ModuleList(get_activation(act, channels) for _ in range(num_levels))
        nn.init.normal_(self.conv.weight, std=0.01)
        if self.conv.bias is not None:
            nn.init.zeros_(self.conv.bias)

    def forward(self, x: torch.Tensor, level: int) -> torch.Tensor:
        return self.act[level](self.norm[level](self.conv(x)))


class RetinaNetHead(nn.Module):
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
    ) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.num_anchors = num_anchors

        def tower(name: str) -> nn.ModuleList:
            return nn.ModuleList(
                LevelConvNormAct(channels, num_levels, norm=norm, ws=ws, act=act, norm_opts=norm_opts,
                                 layer_name=f"head.{name}.{i}")
                for i in range(num_convs)
            )

        self.cls_subnet = tower("cls_subnet")
        self.bbox_subnet = tower("bbox_subnet")
        self.cls_score = nn.Conv2d(channels, num_anchors * num_classes, 3, padding=1)
        self.bbox_pred = nn.Conv2d(channels, num_anchors * 4, 3, padding=1)
        for conv in (self.cls_score, self.bbox_pred):
            nn.init.normal_(conv.weight, std=0.01)
            nn.init.zeros_(conv.bias)
        # Focal loss paper: start every anchor at foreground probability prior_prob, so the
        # many easy negatives do not swamp the first iterations.
        nn.init.constant_(self.cls_score.bias, -math.log((1 - prior_prob) / prior_prob))

    def forward(self, features: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns logits (B, sum HWA, K) and deltas (B, sum HWA, 4) in anchor order."""
        logits, deltas = [], []
        for lvl, f in enumerate(features):
            c, b = f, f
            for layer in self.cls_subnet:
                c = layer(c, lvl)
            for layer in self.bbox_subnet:
                b = layer(b, lvl)
            logits.append(_flatten(self.cls_score(c), self.num_classes))
            deltas.append(_flatten(self.bbox_pred(b), 4))
        return torch.cat(logits, dim=1), torch.cat(deltas, dim=1)


def _flatten(x: torch.Tensor, k: int) -> torch.Tensor:
    # (B, A*K, H, W) -> (B, H*W*A, K): location-major, anchors inner, matching AnchorGenerator.
    b, _, h, w = x.shape
    return x.view(b, -1, k, h, w).permute(0, 3, 4, 1, 2).reshape(b, -1, k)
