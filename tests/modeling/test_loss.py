"""The batched loss against per-image references built on torchvision's Matcher and focal loss."""
import pytest
import torch
import torch.nn.functional as F
from torchvision.models.detection._utils import Matcher
from torchvision.ops import box_iou, sigmoid_focal_loss

from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.loss import RetinaNetLoss


def _targets(g: torch.Generator, counts: list[int], k: int) -> list[dict]:
    out = []
    for n in counts:
        xy = torch.rand(n, 2, generator=g) * 100
        wh = torch.rand(n, 2, generator=g) * 60 + 8
        out.append({"boxes": torch.cat([xy, xy + wh], 1), "labels": torch.randint(0, k, (n,), generator=g)})
    return out


@pytest.mark.parametrize("box_loss", ["smooth_l1", "giou"])
def test_batched_loss_equals_per_image_reference(box_loss):
    g = torch.Generator().manual_seed(1)
    k = 4
    anchors = torch.cat(AnchorGenerator(sizes=(16, 32, 64), strides=(8, 16, 32))([(16, 16), (8, 8), (4, 4)]))
    targets = _targets(g, [3, 0, 7], k)  # an image without objects too
    b, a = len(targets), len(anchors)
    logits = torch.randn(b, a, k, generator=g)
    deltas = torch.randn(b, a, 4, generator=g) * 0.1
    coder = BoxCoder()
    crit = RetinaNetLoss(k, box_coder=coder, box_loss=box_loss, normalizer="batch")
    out = crit(logits, deltas, anchors, targets)

    matcher = Matcher(0.5, 0.4, allow_low_quality_matches=True)
    cls_sum, box_sum, num_pos = 0.0, 0.0, 0
    for i, t in enumerate(targets):
        if len(t["boxes"]) == 0:
            cls_sum += sigmoid_focal_loss(logits[i], torch.zeros(a, k), reduction="sum")
            continue
        m = matcher(box_iou(t["boxes"], anchors))
        fg, valid = m >= 0, m != Matcher.BETWEEN_THRESHOLDS
        tgt = torch.zeros(a, k)
        tgt[fg, t["labels"][m[fg]]] = 1.0
        cls_sum += sigmoid_focal_loss(logits[i][valid], tgt[valid], reduction="sum")
        gt = t["boxes"][m[fg]]
        if box_loss == "smooth_l1":
            box_sum += F.smooth_l1_loss(deltas[i][fg], coder.encode(anchors[fg], gt), beta=0.1, reduction="sum")
        else:
            from torchvision.ops import generalized_box_iou_loss

            box_sum += generalized_box_iou_loss(coder.decode(deltas[i][fg], anchors[fg]), gt, reduction="sum")
        num_pos += int(fg.sum())
    assert num_pos > 0
    torch.testing.assert_close(out["loss_cls"], cls_sum / num_pos, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(out["loss_box"], box_sum / num_pos, rtol=1e-5, atol=1e-6)


def test_ema_normalizer_is_a_checkpointed_buffer():
    crit = RetinaNetLoss(2, box_coder=BoxCoder(), normalizer="ema", normalizer_momentum=0.9)
    assert "num_pos_ema" in crit.state_dict()
    g = torch.Generator().manual_seed(0)
    anchors = torch.cat(AnchorGenerator(sizes=(16,), strides=(8,))([(8, 8)]))
    targets = _targets(g, [2], 2)
    crit(torch.randn(1, len(anchors), 2), torch.zeros(1, len(anchors), 4), anchors, targets)
    assert 10.0 < float(crit.num_pos_ema) < 100.0  # moved from its initial 100 towards the batch count
