"""Batching: pad images of different sizes into one tensor, optionally to a fixed set of
bucket shapes (so a compiled model sees few distinct input shapes)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]], size_divisibility: int,
    buckets: Sequence[tuple[int, int]] | None = None,
) -> tuple[torch.Tensor, list[dict[str, Any]], list[tuple[int, int]]]:
    """-> (images BxCxHpxWp, targets, image_sizes [(h, w)]).

    Images are zero-padded at the bottom/right to the batch's largest size rounded up to a
    multiple of size_divisibility (FPN strides up to 128 then divide evenly). The model zeroes
    the padding again after normalizing (``image_sizes``), so padded pixels are 0 in normalized
    space, and boxes need no shift since padding is bottom/right.
    With ``buckets``, the padded size is then the smallest bucket that holds it (pad_shape).
    """
    if not batch:
        raise ValueError("collate() got an empty batch")
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    sizes = [(int(im.shape[-2]), int(im.shape[-1])) for im in images]
    max_h = max(h for h, _ in sizes)
    max_w = max(w for _, w in sizes)
    if size_divisibility > 1:
        d = size_divisibility
        max_h = (max_h + d - 1) // d * d
        max_w = (max_w + d - 1) // d * d
    if buckets:
        max_h, max_w = pad_shape(max_h, max_w, buckets)
    out = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return out, targets, sizes


def make_buckets(max_h: int, max_w: int, *, divisor: int, per_side: int = 2) -> list[tuple[int, int]]:
    """``per_side ** 2`` bucket shapes covering images up to ``max_h`` x ``max_w``: each side
    takes ``per_side`` values evenly spaced up to the maximum, rounded up to ``divisor``."""
    if per_side < 1 or divisor < 1 or max_h < 1 or max_w < 1:
        raise ValueError(f"make_buckets: need positive sizes, per_side and divisor; got "
                         f"max {max_h}x{max_w}, per_side={per_side}, divisor={divisor}")

    def side(m: int) -> list[int]:
        return sorted({math.ceil(m * k / per_side / divisor) * divisor for k in range(1, per_side + 1)})

    return [(h, w) for h in side(max_h) for w in side(max_w)]


def pad_shape(h: int, w: int, buckets: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The smallest-area bucket (H, W) with H >= h and W >= w (ties: the first listed).

    ValueError if no bucket holds (h, w): the fix is a larger bucket or a smaller max size.
    """
    fits = [(bh * bw, i) for i, (bh, bw) in enumerate(buckets) if bh >= h and bw >= w]
    if not fits:
        largest = max(buckets, key=lambda b: b[0] * b[1]) if buckets else None
        raise ValueError(f"pad_shape: a {h}x{w} batch fits no bucket (largest {largest}); fix: add a "
                         f"bucket of at least {h}x{w} or lower the input's max size")
    return tuple(buckets[min(fits)[1]])  # type: ignore[return-value]
