"""Anchor generation for the P3-P7 pyramid: sizes x scales x ratios at every location."""
from __future__ import annotations

import math
from typing import Sequence

import torch
from torch import nn

from gn_detect.config.schema import CHOICES


ANCHOR_STYLES: tuple[str, ...] = CHOICES["model.anchors.style"]


class AnchorGenerator(nn.Module):
    """Anchors in (level, y, x, anchor) order, the order the head flattens its outputs in.

    Anchor centres sit at ``(i + offset) * stride`` for feature cell ``i``. ``offset=0.0`` (the
    default) is what torchvision's AnchorGenerator and detectron2's DefaultAnchorGenerator use;
    0.5 centres each anchor on its cell's receptive field instead.

    ``style="exact"`` (default) uses the sizes, scales and strides as given. ``"torchvision"``
    reproduces torchvision's AnchorGenerator as its RetinaNets configure it: each size x scale
    truncated to an integer (``int(32 * 2 ** (1/3)) = 40``), cell corners rounded, and each
    level's stride taken as padded input size // grid size per axis (so at 480x640 P6/P7 have
    vertical strides 60 and 120); ``forward`` then needs ``image_size``. ``"detectron"`` is
    Detectron's ``generate_anchors`` (its RetinaNet's cell anchors): a ``stride x stride`` base box
    ``[0, 0, stride-1, stride-1]``, its width and height for each ratio rounded at that base size
    (``round(sqrt(stride**2 / ratio))``, then ``round(w * ratio)``, half to even as ``np.round``),
    scaled by ``size * scale / stride`` about the base box's centre ``(stride-1)/2``. Detectron's
    corners are inclusive (its width is ``x2 - x1 + 1``); they are returned as continuous corners
    ``(x1, y1, x2 + 1, y2 + 1)``, which gn-detect's box coder (width ``x2 - x1``) decodes exactly as
    Detectron's ``+1`` coder does, giving Detectron's boxes as its COCO results write them
    (docs/weights.md "Detector parity switches").
    """

    def __init__(
        self,
        sizes: Sequence[float] = (32, 64, 128, 256, 512),
        strides: Sequence[int] = (8, 16, 32, 64, 128),
        scales: Sequence[float] = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)),
        ratios: Sequence[float] = (0.5, 1.0, 2.0),
        offset: float = 0.0,
        style: str = "exact",
    ) -> None:
        super().__init__()
        if len(sizes) != len(strides):
            raise ValueError(
                f"anchors: {len(sizes)} sizes for {len(strides)} pyramid levels; give one base size per level"
            )
        if style not in ANCHOR_STYLES:
            raise ValueError(f"model.anchors.style={style!r}: use one of {', '.join(ANCHOR_STYLES)}")
        self.strides = list(strides)
        self.offset = offset
        self.style = style
        self.num_anchors = len(scales) * len(ratios)
        cells = [self._detectron_cell(size, stride, scales, ratios) if style == "detectron"
                 else (self._cell if style == "exact" else self._torchvision_cell)(size, scales, ratios)
                 for size, stride in zip(sizes, strides)]
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

    @staticmethod
    def _torchvision_cell(size: float, scales: Sequence[float], ratios: Sequence[float]) -> torch.Tensor:
        # torchvision.models.detection.anchor_utils.AnchorGenerator.generate_anchors, in its float32
        sizes = torch.as_tensor([int(size * s) for s in scales], dtype=torch.float32)
        h_ratios = torch.sqrt(torch.as_tensor(list(ratios), dtype=torch.float32))
        w_ratios = 1 / h_ratios
        ws = (w_ratios[:, None] * sizes[None, :]).view(-1)
        hs = (h_ratios[:, None] * sizes[None, :]).view(-1)
        return (torch.stack([-ws, -hs, ws, hs], dim=1) / 2).round()

    @staticmethod
    def _detectron_cell(size: float, stride: int, scales: Sequence[float],
                        ratios: Sequence[float]) -> torch.Tensor:
        # Detectron's generate_anchors(stride, sizes=(size * scale,), aspect_ratios=(ratio,)), in float64
        ctr = (stride - 1) / 2
        out = []
        for r in ratios:
            w0 = round(math.sqrt(stride * stride / r))  # Python's round is half to even, as np.round
            h0 = round(w0 * r)
            for s in scales:
                k = size * s / stride
                hw, hh = 0.5 * (w0 * k - 1), 0.5 * (h0 * k - 1)
                out.append([ctr - hw, ctr - hh, ctr + hw + 1, ctr + hh + 1])  # inclusive -> continuous
        return torch.tensor(out, dtype=torch.float64).float()

    def level_strides(self, feature_shapes: Sequence[tuple[int, int]],
                      image_size: tuple[int, int] | None) -> list[tuple[float, float]]:
        """(stride_y, stride_x) per level: the configured strides, or torchvision's padded size //
        grid size."""
        if self.style != "torchvision":
            return [(s, s) for s in self.strides]
        if image_size is None:
            raise ValueError("anchors with style='torchvision' need the padded input size (image_size=)")
        return [(image_size[0] // h, image_size[1] // w) for h, w in feature_shapes]

    def cell_anchors(self) -> list[torch.Tensor]:
        return [getattr(self, f"cell{i}") for i in range(len(self.strides))]

    def forward(self, feature_shapes: Sequence[tuple[int, int]],
                image_size: tuple[int, int] | None = None) -> list[torch.Tensor]:
        """Returns one (H*W*A, 4) tensor per level; cached per shape and device. ``image_size``:
        the padded input's (H, W) (used by style='torchvision' only)."""
        device = self.cell0.device
        strides = self.level_strides(feature_shapes, image_size)
        key = (tuple(feature_shapes), tuple(strides), str(device))
        hit = self._cache.get(key)
        if hit is not None:
            return list(hit)
        per_level = []
        for (h, w), (sy, sx), cell in zip(feature_shapes, strides, self.cell_anchors()):
            ys = (torch.arange(h, device=device, dtype=torch.float32) + self.offset) * sy
            xs = (torch.arange(w, device=device, dtype=torch.float32) + self.offset) * sx
            cy, cx = torch.meshgrid(ys, xs, indexing="ij")
            shifts = torch.stack([cx, cy, cx, cy], dim=-1).reshape(-1, 1, 4)
            per_level.append((shifts + cell.view(1, -1, 4)).reshape(-1, 4))
        if len(self._cache) > 32:  # multi-scale training sees a handful of shapes; bound the cache
            self._cache.clear()
        self._cache[key] = tuple(per_level)
        return per_level
