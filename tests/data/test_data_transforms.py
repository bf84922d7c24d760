"""Transforms and collate: boxes stay on the pixels they cover."""

from __future__ import annotations

import pytest
import torch

from gn_detect.data import DetectionTransform, boxes_to_original, collate
from gn_detect.data.transforms import hflip, resize, resize_shape


def pixel_box(image: torch.Tensor) -> list[int]:
    """xyxy pixel-edge extents of the bright region of a 1-channel-like image."""
    m = image.mean(0) > 0.5
    ys = torch.nonzero(m.any(1)).flatten()
    xs = torch.nonzero(m.any(0)).flatten()
    return [int(xs[0]), int(ys[0]), int(xs[-1]) + 1, int(ys[-1]) + 1]


@pytest.mark.parametrize("short,max_size,flip", [(200, 1000, 0.0), (200, 1000, 1.0), (40, 1000, 1.0),
                                                 (300, 240, 0.0), (77, 1000, 1.0)])
def test_box_follows_pixels(short: int, max_size: int, flip: float) -> None:
    img = torch.zeros(3, 100, 150, dtype=torch.uint8)
    img[:, 20:50, 30:90] = 255
    boxes = torch.tensor([[30.0, 20.0, 90.0, 50.0]])
    out, b, info = DetectionTransform(short, max_size, flip_prob=flip)(img, boxes, torch.Generator().manual_seed(0))
    assert info.flipped == (flip == 1.0)
    assert tuple(out.shape[-2:]) == info.size
    assert out.dtype == torch.uint8  # pixels stay 0-255: the model normalizes
    px = pixel_box(out.float() / 255)
    # bilinear resampling blurs the edge by under a pixel either way
    assert max(abs(p - q) for p, q in zip(px, b[0].tolist())) <= 1.0, (px, b)


def test_resize_shape_like_detectron2() -> None:
    assert resize_shape(480, 640, 800, 1333) == (800, 1067, 800 / 480)
    h, w, s = resize_shape(100, 1000, 800, 1333)  # capped by max size
    assert (h, w) == (133, 1333) and s == pytest.approx(1.333)
    assert resize_shape(640, 480, 800, 1333)[:2] == (1067, 800)


def test_hflip_twice_is_identity_and_boxes_mirror() -> None:
    img = torch.arange(2 * 5 * 7, dtype=torch.float32).view(2, 5, 7)
    b = torch.tensor([[1.0, 0, 3, 2], [0, 1, 7, 5]])
    f, fb = hflip(img, b)
    torch.testing.assert_close(fb, torch.tensor([[4.0, 0, 6, 2], [0, 1, 7, 5]]))
    torch.testing.assert_close(hflip(f, fb)[0], img)
    torch.testing.assert_close(hflip(f, fb)[1], b)


def test_resize_empty_boxes() -> None:
    img, b = resize(torch.zeros(3, 10, 20, dtype=torch.uint8), torch.zeros(0, 4), (20, 40))
    assert img.shape == (3, 20, 40) and b.shape == (0, 4)


def test_random_choice_deterministic_given_generator() -> None:
    t = DetectionTransform([100, 120, 140], 1000, flip_prob=0.5)
    img = torch.zeros(3, 50, 60, dtype=torch.uint8)

    def run(seed: int) -> list[tuple]:
        g = torch.Generator().manual_seed(seed)
        return [(t(img, torch.zeros(0, 4), g)[2].size, t(img, torch.zeros(0, 4), g)[2].flipped) for _ in range(10)]

    assert run(1) == run(1)
    assert run(1) != run(2)
    seen = {(s, f) for seed in range(10) for s, f in run(seed)}
    assert {s[0] for s, _ in seen} == {100, 120, 140} and {f for _, f in seen} == {True, False}


def test_collate_pads_to_multiple() -> None:
    a = torch.ones(3, 100, 130)
    b = torch.full((3, 129, 60), 2.0)
    images, targets, sizes = collate([(a, {"i": 0}), (b, {"i": 1})], size_divisibility=128)
    assert images.shape == (2, 3, 256, 256)
    assert sizes == [(100, 130), (129, 60)] and [t["i"] for t in targets] == [0, 1]
    torch.testing.assert_close(images[0, :, :100, :130], a)
    assert images[0, :, 100:].abs().sum() == 0 and images[0, :, :, 130:].abs().sum() == 0
    assert images[1, :, 129:].abs().sum() == 0 and images[1, :, :, 60:].abs().sum() == 0
    assert collate([(torch.ones(3, 128, 256), {})], size_divisibility=128)[0].shape == (1, 3, 128, 256)
    assert collate([(a, {})], size_divisibility=0)[0].shape == (1, 3, 100, 130)


def test_boxes_to_original_inverts_resize() -> None:
    img = torch.zeros(3, 333, 517, dtype=torch.uint8)
    boxes = torch.tensor([[0.0, 0.0, 517.0, 333.0], [10.5, 20.25, 100.0, 300.0]])
    _, b, info = DetectionTransform(800, 1333)(img, boxes)
    torch.testing.assert_close(boxes_to_original(b, info.size, (333, 517)), boxes)
