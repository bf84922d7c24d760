"""Resize (shortest edge + max size) and horizontal flip for detection. Pixels stay 0-255 RGB
(uint8 in, uint8 out): the model normalizes its input (gn_detect/modeling/retinanet.py), so a
batch can travel to the device as uint8 and figures read the images as they are.

Images are uint8 (or float) tensors 3xHxW, boxes float Nx4 xyxy in pixel-edge coordinates
(a box covering pixel columns a..b-1 is x1=a, x2=b), so resize multiplies and flip is W - x.
All randomness comes from an explicit torch.Generator, so an item is reproducible from a seed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F

def resize_shape(h: int, w: int, short_edge: int, max_size: int) -> tuple[int, int, float]:
    """Output (new_h, new_w, scale) like detectron2's ResizeShortestEdge.

    scale = min(short_edge / short side, max_size / long side); new sizes are rounded.
    """
    scale = short_edge / min(h, w)
    if max_size > 0 and max(h, w) * scale > max_size:
        scale = max_size / max(h, w)
    new_h, new_w = max(1, int(h * scale + 0.5)), max(1, int(w * scale + 0.5))
    return new_h, new_w, scale


def resize(image: torch.Tensor, boxes: torch.Tensor, size: tuple[int, int], *,
           uint8: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
    """Bilinear resize (antialiased when shrinking) of a 3xHxW image, boxes scaled per axis.

    ``uint8``: a uint8 image is resized as uint8 (PyTorch's integer kernel, about 2x faster on
    CPU than the float path; pixels within 1 of it); otherwise through float32, rounded.

    Boxes use the exact per-axis factors new/old, so they stay aligned with the resized pixels
    even though rounding makes new_w/w and new_h/h differ slightly.
    """
    h, w = image.shape[-2:]
    new_h, new_w = size
    if (new_h, new_w) != (h, w) and uint8 and image.dtype == torch.uint8:
        image = F.interpolate(image[None], size=(new_h, new_w), mode="bilinear", align_corners=False,
                              antialias=new_h < h or new_w < w)[0]
    elif (new_h, new_w) != (h, w):
        dtype = image.dtype
        x = image[None].float()
        x = F.interpolate(x, size=(new_h, new_w), mode="bilinear", align_corners=False,
                          antialias=new_h < h or new_w < w)
        if dtype == torch.uint8:
            x = x.round_().clamp_(0, 255)
        image = x[0].to(dtype)
    if boxes.numel():
        factors = torch.tensor([new_w / w, new_h / h, new_w / w, new_h / h], dtype=boxes.dtype)
        boxes = boxes * factors
    return image, boxes


def hflip(image: torch.Tensor, boxes: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    w = image.shape[-1]
    image = image.flip(-1)
    if boxes.numel():
        boxes = torch.stack([w - boxes[:, 2], boxes[:, 1], w - boxes[:, 0], boxes[:, 3]], dim=1)
    return image, boxes


@dataclass
class TransformInfo:
    size: tuple[int, int]  # (h, w) after resize
    scale: float  # resized / original (uniform factor; per-axis factors are size / orig_size)
    flipped: bool


class DetectionTransform:
    """Resize shortest edge -> optional random horizontal flip (pixels keep their dtype and range).

    min_sizes: one short side (test) or several (train: one chosen uniformly per image).
    uint8_resize: resize uint8 images as uint8 (``data.decode=tensor``), not through float.
    """

    def __init__(
        self,
        min_sizes: int | Sequence[int] = 800,
        max_size: int = 1333,
        flip_prob: float = 0.0,
        uint8_resize: bool = False,
    ) -> None:
        self.min_sizes = (int(min_sizes),) if isinstance(min_sizes, int) else tuple(int(s) for s in min_sizes)
        if not self.min_sizes or min(self.min_sizes) <= 0:
            raise ValueError(f"min_sizes must be positive ints, got {min_sizes!r}")
        self.max_size = int(max_size)
        self.flip_prob = float(flip_prob)
        self.uint8_resize = bool(uint8_resize)

    @property
    def is_random(self) -> bool:
        return len(self.min_sizes) > 1 or self.flip_prob > 0

    def __call__(
        self, image: torch.Tensor, boxes: torch.Tensor, generator: torch.Generator | None = None
    ) -> tuple[torch.Tensor, torch.Tensor, TransformInfo]:
        h, w = image.shape[-2:]
        # draw both random numbers up front so the stream does not depend on the branch taken
        u = torch.rand(2, generator=generator) if self.is_random else torch.zeros(2)
        short = self.min_sizes[min(int(u[0] * len(self.min_sizes)), len(self.min_sizes) - 1)]
        new_h, new_w, scale = resize_shape(h, w, short, self.max_size)
        image, boxes = resize(image, boxes, (new_h, new_w), uint8=self.uint8_resize)
        flipped = bool(u[1] < self.flip_prob)
        if flipped:
            image, boxes = hflip(image, boxes)
        return image, boxes, TransformInfo((new_h, new_w), scale, flipped)

    def __repr__(self) -> str:
        return (f"DetectionTransform(min_sizes={self.min_sizes}, max_size={self.max_size}, "
                f"flip_prob={self.flip_prob}, uint8_resize={self.uint8_resize})")


def boxes_to_original(boxes: torch.Tensor, size: Sequence[int], orig_size: Sequence[int]) -> torch.Tensor:
    """Map xyxy boxes from resized-image pixels (size (h, w)) back to the original image.

    Uses the exact per-axis factors the resize used (orig / size); dividing by the target's
    uniform `scale` instead is off by under half an original pixel. Boxes are clipped to the
    original image. Test-time images are never flipped, so there is nothing to undo.
    """
    (h, w), (oh, ow) = size, orig_size
    f = torch.tensor([ow / w, oh / h, ow / w, oh / h], dtype=boxes.dtype, device=boxes.device)
    out = boxes * f
    out[:, 0::2] = out[:, 0::2].clamp(0, ow)
    out[:, 1::2] = out[:, 1::2].clamp(0, oh)
    return out
