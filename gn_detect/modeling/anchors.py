"""Anchor generation for the P3-P7 pyramid: sizes x scales x ratios at every location."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn


class AnchorGenerator(nn.Module):
    """Anchors in (level, y, x, anchor) order, the order the head flattens its outputs in.

    Anchor centres sit at ``(i + offset) * stride`` for feature cell ``i``. ``offset=0.0`` (the
    default) is what torchvision's AnchorGenerator and detectron2's DefaultAnchorGenerator use;
    0.5 centres each anchor on its cell's receptive field instead.
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(
                f"anchors: {len(sizes)} sizes for {len(strides)} pyramid levels; give one base size per level"
            )
        self.strides = list(strides)
        self.offset = offset
        self.num_anchors = len(scales) * len(ratios)
        cells = [self._cell(s, scales, ratios) for s in sizes]
        for i, c in enumerate(cells):
            self.register_buffer(f"cell{i}", c, persistent=False)
        self._cache: dict[tuple, torch.Tensor] = {}

    @staticmethod
    def _cell(size: float, scales: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
        out = []
        # ratio = h / w, area preserved: w = size*scale/sqrt(ratio)
        for r in ratios:
            for s in scales:
                area = (size * s) ** 2
                w = math.sqrt(area / r)
                h = w * r
                out.append([-w / 2, -h / 2, w / 2, h / 2])
        return torch.tensor(out, dtype=torch.float32)

    def cell_anchors(self) -> list[torch.Tensor]:
        return [getattr(self, f"cell{i}") for i in range(len(self.strides))]

    def forward(self, feature_shapes: Sequence[tuple[int, int]]) -> list[torch.Tensor]:
        """Returns one (H*W*A, 4) tensor per level; cached per shape and device."""
        device = self.cell0.device
        key = (tuple(feature_shapes), str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return list(hit)
        per_level = []
        for (h, w), stride, cell in zip(feature_shapes, self.strides, self.cell_anchors()):
            ys = (torch.arange(h, device=device, dtype=torch.float32) + self.offset) * stride
            xs = (torch.arange(w, device=device, dtype=torch.float32) + self.offset) * stride
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            per_level.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        if len(self._cache) > 32:  # multi-scale training sees a handful of shapes; bound the cache
            self._cache.clear()
        self._cache[key] = tuple(per_level)
        return per_level
