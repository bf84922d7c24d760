"""The model normalizes its 0-255 RGB input: the same numbers as before the change, when the
data pipeline normalized ((x/255 - mean)/std with ImageNet statistics) and collate zero-padded
(so a checkpoint trained then gives the same detections), and BGR/mean/std as configured."""
from __future__ import annotations

import torch

from gn_detect.data import collate
from gn_detect.deploy.network import detect_from_head
from gn_detect.modeling import build_model

TINY = {"backbone": {"depth": "tiny", "norm": "bn", "freeze_at": 0}, "fpn": {"out_channels": 16},
        "head": {"num_convs": 1, "prior_prob": 0.5}}


def _images():
    g = torch.Generator().manual_seed(0)
    return [torch.randint(0, 256, (3, 100, 130), generator=g, dtype=torch.uint8),
            torch.randint(0, 256, (3, 128, 96), generator=g, dtype=torch.uint8)]


def test_detections_equal_the_old_normalize_then_pad_pipeline():
    torch.manual_seed(0)
    model = build_model(TINY, num_classes=3).eval()
    images = _images()
    batch, _, sizes = collate([(im, {}) for im in images], 128)
    mean = torch.tensor([0.485, 0.456, 0.406]).view(3, 1, 1)
    std = torch.tensor([0.229, 0.224, 0.225]).view(3, 1, 1)
    old = [((im.float() / 255 - mean) / std, {}) for im in images]  # what the transforms returned
    old_batch, _, _ = collate(old, 128)
    with torch.no_grad():
        assert torch.allclose(model.normalizer(batch, sizes), old_batch, atol=1e-5)
        new, ref = model(batch, sizes), model.head(model.fpn(model.backbone(old_batch)))
    ref = detect_from_head(model, *ref, tuple(batch.shape[-2:]), sizes)
    for a, b in zip(new, ref):
        assert len(a["scores"]) > 0 and torch.equal(a["labels"], b["labels"])
        torch.testing.assert_close(a["boxes"], b["boxes"], atol=0.01, rtol=0)
        torch.testing.assert_close(a["scores"], b["scores"], atol=1e-4, rtol=0)


def test_bgr_mean_std_and_padding():
    model = build_model({**TINY, "input": {"format": "BGR", "pixel_mean": [1.0, 2.0, 3.0],
                                           "pixel_std": [2.0, 4.0, 8.0]}}, num_classes=3)
    x = torch.full((1, 3, 4, 6), 10, dtype=torch.uint8)
    x[0, 0] = 20  # R
    out = model.normalizer(x, [(3, 5)])
    want = torch.stack([torch.full((4, 6), (10 - 1) / 2), torch.full((4, 6), (10 - 2) / 4),
                        torch.full((4, 6), (20 - 3) / 8)])  # B, G, R order
    want[:, 3:, :], want[:, :, 5:] = 0, 0
    torch.testing.assert_close(out[0], want)
