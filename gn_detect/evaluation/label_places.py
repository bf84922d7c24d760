"""Where a box's label goes so that no two labels overlap: the one placement rule of examples.png
(evaluation/figures.py) and of predict's drawn images (deploy/draw.py), in image coordinates (y
grows downward, pixels)."""
from __future__ import annotations

from collections.abc import Sequence

Box = tuple[float, float, float, float]  # x0, y0, x1, y1 (y0 the top edge)

__all__ = ["Box", "free_spot", "overlaps"]


def overlaps(a: Box, b: Box, gap: float = 1.0) -> bool:
    """Whether ``a`` and ``b`` are closer than ``gap`` (touching counts)."""
    return a[0] - gap <= b[2] and b[0] <= a[2] + gap and a[1] - gap <= b[3] and b[1] <= a[3] + gap


def free_spot(width: float, height: float, x: float, y: float, above: bool, area: Box, taken: Sequence[Box],
              gap: float = 1.0) -> Box | None:
    """A ``width`` x ``height`` label for the box whose top-left corner is (``x``, ``y``): it starts
    just above the box (``above``) or just inside its top edge, shifted sideways into ``area``, and
    moves down (then up) in steps of its own height until it is clear of every label in ``taken``
    (by ``gap``) and inside ``area``; None when no place is free."""
    ax0, ay0, ax1, ay1 = area
    left = min(max(x, ax0), ax1 - width)
    top = y - height if above else y
    step = height + gap
    steps = int((ay1 - ay0) // step) + 1
    for t in [top + k * step for k in range(steps)] + [top - k * step for k in range(1, steps)]:
        box = (left, t, left + width, t + height)
        if box[1] < ay0 or box[3] > ay1:
            continue
        if not any(overlaps(box, o, gap) for o in taken):
            return box
    return None
