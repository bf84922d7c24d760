"""The switches detector parity needs (issue 27), each with today's behaviour as one choice:
anchor style, padding multiple, clip before/after NMS, per-level score threshold, ReLU before P7,
eps 0 for frozen statistics. References: torchvision's own modules and hand-written arithmetic."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from gn_detect.config import ConfigError
from gn_detect.config.schema import TrainConfig
from gn_detect.config.validate import validate_train_config
from gn_detect.modeling import build_model, size_divisibility
from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.postprocess import postprocess

SCALES, RATIOS = (1.0, 2 ** (1 / 3), 2 ** (2 / 3)), (0.5, 1.0, 2.0)


@pytest.mark.parametrize("hw", [(512, 640), (480, 640)])
def test_torchvision_anchor_style_equals_torchvisions_anchor_generator(hw):
    from torchvision.models.detection.anchor_utils import AnchorGenerator as TVAnchorGenerator
    from torchvision.models.detection.image_list import ImageList
    from torchvision.models.detection.retinanet import _default_anchorgen

    tv = _default_anchorgen()  # what retinanet_resnet50_fpn[_v2] build
    assert isinstance(tv, TVAnchorGenerator)
    ours = AnchorGenerator(sizes=(32, 64, 128, 256, 512), scales=SCALES, ratios=RATIOS, style="torchvision")
    shapes = [((hw[0] + s - 1) // s, (hw[1] + s - 1) // s) for s in (8, 16, 32, 64, 128)]  # 32-padded input
    ref = tv(ImageList(torch.zeros(1, 3, *hw), [hw]), [torch.zeros(1, 1, *s) for s in shapes])[0]
    mine = torch.cat(ours(shapes, hw))
    assert torch.equal(mine, ref)  # same order (level, y, x, ratio-major anchor), same values
    exact = torch.cat(AnchorGenerator(scales=SCALES, ratios=RATIOS)(shapes, hw))
    assert (exact - ref).abs().max() > (20 if hw[0] % 128 else 0.5)  # today's exact anchors are another choice, kept by default


def test_torchvision_style_needs_the_input_size():
    with pytest.raises(ValueError, match="need the padded input size"):
        AnchorGenerator(style="torchvision")([(4, 4)] * 5)
    with pytest.raises(ValueError, match=r"model.anchors.style='tv'"):
        AnchorGenerator(style="tv")


def _head_outputs(seed=0, n_per_level=(6, 3), k=2):
    """Anchors 100 px apart (no two overlap, so NMS keeps every candidate), the first one partly
    outside a 100 x 880 image (clipping matters)."""
    g = torch.Generator().manual_seed(seed)
    total = sum(n_per_level)
    x0 = torch.arange(total, dtype=torch.float32)[:, None] * 100 - 20
    boxes = torch.cat([x0, torch.full_like(x0, 10), x0 + 40, torch.full_like(x0, 50)], 1)
    anchors = list(boxes.split(list(n_per_level)))
    return torch.randn(1, total, k, generator=g) * 2, torch.randn(1, total, 4, generator=g) * 0.1, anchors


def test_per_level_score_threshold_and_clip_after_nms():
    from torchvision.ops import batched_nms

    logits, deltas, anchors = _head_outputs()
    coder, size = BoxCoder(), [(100, 880)]
    scores = logits[0].sigmoid()  # (A, K)
    base = postprocess(logits, deltas, anchors, size, coder, score_thresh=0.05)[0]
    per = postprocess(logits, deltas, anchors, size, coder, score_thresh_per_level=[0.3, 1.0])[0]
    assert len(base["scores"]) == int((scores > 0.05).sum())
    assert len(per["scores"]) == int((scores[:6] > 0.3).sum()) < len(base["scores"])
    with pytest.raises(ValueError, match="score_thresh_per_level has 1 values for 2 pyramid levels"):
        postprocess(logits, deltas, anchors, size, coder, score_thresh_per_level=[0.1])
    # after_nms: NMS on the unclipped boxes (torchvision's batched_nms as reference), the kept ones clipped
    after = postprocess(logits, deltas, anchors, size, coder, clip="after_nms", nms_thresh=0.5)[0]
    flat = scores.reshape(-1)
    idx = (flat > 0.05).nonzero().squeeze(1)
    boxes = coder.decode(deltas[0][idx // 2], torch.cat(anchors)[idx // 2])
    kept = batched_nms(boxes, flat[idx], idx % 2, 0.5)
    ref = torch.stack([boxes[kept, 0].clamp(0, 880), boxes[kept, 1].clamp(0, 100),
                       boxes[kept, 2].clamp(0, 880), boxes[kept, 3].clamp(0, 100)], 1)
    torch.testing.assert_close(after["boxes"], ref)
    torch.testing.assert_close(after["scores"], flat[idx][kept])


def test_relu_before_p7_and_the_padding_multiple_switches():
    cfg = {"backbone": {"depth": "tiny", "norm": "bn"}, "fpn": {"out_channels": 8}}
    torch.manual_seed(0)
    model = build_model(cfg, num_classes=2).eval()
    assert model.size_divisibility == 128 == size_divisibility(OmegaConf.create({"anchors": {"strides": [8, 128]}}))
    torch.manual_seed(0)
    off = build_model({**cfg, "fpn": {"out_channels": 8, "relu_before_p7": False}, "size_divisibility": 32},
                      num_classes=2).eval()
    assert off.size_divisibility == 32
    x = torch.randn(1, 3, 96, 64)
    with torch.no_grad():
        p6 = model.fpn(model.backbone(x))[3]
        torch.testing.assert_close(off.fpn(off.backbone(x))[4], off.fpn.p7(p6))
        torch.testing.assert_close(model.fpn(model.backbone(x))[4], model.fpn.p7(F.relu(p6)))
    with pytest.raises(ValueError, match="padding multiple 48 is not a multiple of the backbone's size_divisibility 32"):
        build_model({**cfg, "size_divisibility": 48}, num_classes=2)


def test_eps_zero_is_allowed_only_for_a_norm_with_frozen_statistics():
    def cfg(norm):
        return OmegaConf.merge(OmegaConf.structured(TrainConfig), {
            "data": {"root": "x"}, "model": {"backbone": {"norm": norm, "norm_opts": {"eps": 0.0}}}})

    validate_train_config(cfg("affine"))  # torchvision's FrozenBatchNorm2d(eps=0) as an affine
    with pytest.raises(ConfigError, match=r"model.backbone.norm_opts.eps: 0.0 must be a positive"):
        validate_train_config(cfg("bn"))
