"""One batched NMS over the batch equals the per-image, per-level reference."""
import torch
from torchvision.ops import batched_nms

from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.postprocess import postprocess


def test_batched_postprocess_equals_per_image_loop():
    g = torch.Generator().manual_seed(3)
    k = 3
    anchors = AnchorGenerator(sizes=(16, 32), strides=(8, 16))([(8, 8), (4, 4)])
    a = sum(len(x) for x in anchors)
    logits = torch.randn(2, a, k, generator=g) * 2 - 1
    deltas = torch.randn(2, a, 4, generator=g) * 0.2
    sizes = [(64, 64), (50, 60)]
    coder = BoxCoder()
    kw = dict(score_thresh=0.3, topk_candidates=50, nms_thresh=0.5, detections_per_image=20)
    out = postprocess(logits, deltas, anchors, sizes, coder, **kw)
    for i, (h, w) in enumerate(sizes):
        boxes_all, scores_all, labels_all, start = [], [], [], 0
        for lvl in anchors:
            s = logits[i, start:start + len(lvl)].sigmoid().flatten()
            d = deltas[i, start:start + len(lvl)]
            start += len(lvl)
            top, idx = s.topk(min(50, len(s)))
            keep = top > 0.3
            top, idx = top[keep], idx[keep]
            boxes = coder.decode(d[idx // k], lvl[idx // k])
            boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
            boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
            boxes_all.append(boxes), scores_all.append(top), labels_all.append(idx % k)
        boxes, scores, labels = torch.cat(boxes_all), torch.cat(scores_all), torch.cat(labels_all)
        keep = batched_nms(boxes, scores, labels, 0.5)[:20]
        torch.testing.assert_close(out[i]["scores"], scores[keep])
        torch.testing.assert_close(out[i]["boxes"], boxes[keep])
        assert torch.equal(out[i]["labels"], labels[keep])
        assert len(keep) > 0
