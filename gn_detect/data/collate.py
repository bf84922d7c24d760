"""Batching: pad images of different sizes into one tensor."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch


def collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, Any]]], size_divisibility: int = 128
) -> tuple[torch.Tensor, list[dict[str, Any]], list[tuple[int, int]]]:
    """-> (images BxCxHpxWp, targets, image_sizes [(h, w)]).

    Images are zero-padded at the bottom/right to the batch's largest size rounded up to a
    multiple of size_divisibility (FPN strides up to 128 then divide evenly). Zero is the
    dataset mean after normalization, and boxes need no shift since padding is bottom/right.
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
    out = images[0].new_zeros((len(images), images[0].shape[0], max_h, max_w))
    for i, im in enumerate(images):
        out[i, :, : im.shape[-2], : im.shape[-1]].copy_(im)
    return out, targets, sizes
