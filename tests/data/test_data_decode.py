"""data.decode=tensor (torchvision.io decode + uint8 resize) against today's path (PIL + float resize):
the same boxes, labels, sizes and random draws exactly; pixels within the documented rounding (1)."""

from __future__ import annotations

import torch

from gn_detect.data import CocoDetection, DetectionTransform, collate


def _pair(coco128, min_sizes, flip_prob):
    kw = dict(verify_images=False)
    ann = coco128 / "annotations" / "instances_train2017.json"
    pil = CocoDetection(coco128 / "train2017", ann, transform=DetectionTransform(min_sizes, 1333, flip_prob), **kw)
    fast = CocoDetection(coco128 / "train2017", ann, decode="tensor",
                         transform=DetectionTransform(min_sizes, 1333, flip_prob, uint8_resize=True), **kw)
    return pil, fast


def test_tensor_decode_matches_pil_path(coco128):
    pil, fast = _pair(coco128, [480, 800, 1024], 0.5)
    for i in range(0, 24, 3):
        (a, ta), (b, tb) = pil[(i, 7 * i + 1)], fast[(i, 7 * i + 1)]
        assert a.dtype == b.dtype == torch.uint8 and a.shape == b.shape
        assert (a.int() - b.int()).abs().max() <= 1  # uint8 vs float-then-round bilinear
        assert torch.equal(ta["boxes"], tb["boxes"]) and torch.equal(ta["labels"], tb["labels"])
        assert {k: v for k, v in ta.items() if k not in ("boxes", "labels")} == \
            {k: v for k, v in tb.items() if k not in ("boxes", "labels")}
    ia, _, sa = collate([pil[(0, 3)], pil[(1, 4)]], 128)
    ib, _, sb = collate([fast[(0, 3)], fast[(1, 4)]], 128)
    assert sa == sb and ia.shape == ib.shape and (ia.int() - ib.int()).abs().max() <= 1


def test_tensor_decode_identical_pixels_without_resize(coco128):
    """The decoders themselves agree exactly (same libjpeg): only the resize rounds differently."""
    pil, fast = _pair(coco128, 1, 0.0)
    for i in range(4):
        h, w = pil.image_info(i)["height"], pil.image_info(i)["width"]
        assert torch.equal(pil.read_image(i), fast.read_image(i)) and fast.read_image(i).shape == (3, h, w)
