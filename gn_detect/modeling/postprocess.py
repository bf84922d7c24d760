"""Inference: top-k candidates per level, box decoding, one batched NMS for the whole batch."""
from __future__ import annotations

from typing import Sequence

import torch
from torchvision.ops import batched_nms

from gn_detect.modeling.box_coder import BoxCoder


@torch.no_grad()
def postprocess(
    logits: torch.Tensor,
    deltas: torch.Tensor,
    anchors: list[torch.Tensor],
    image_sizes: list[tuple[int, int]],
    box_coder: BoxCoder,
    *,
    score_thresh: float = 0.05,
    topk_candidates: int = 1000,
    nms_thresh: float = 0.5,
    detections_per_image: int = 100,
    score_thresh_per_level: Sequence[float] = (),
    clip: str = "before_nms",
) -> list[dict[str, torch.Tensor]]:
    """logits (B, A, K) and deltas (B, A, 4) in anchor order; anchors one tensor per level.

    ``score_thresh_per_level``: one threshold per level instead of ``score_thresh`` (Detectron
    uses 0.0 on P7); ``clip``: boxes are clipped to their image before NMS (torchvision, the
    default) or NMS runs on the unclipped boxes and the kept ones are clipped (detectron2)."""
    if score_thresh_per_level and len(score_thresh_per_level) != len(anchors):
        raise ValueError(f"model.test.score_thresh_per_level has {len(score_thresh_per_level)} values for "
                         f"{len(anchors)} pyramid levels; give one per level or []")
    if clip not in ("before_nms", "after_nms"):
        raise ValueError(f"model.test.clip={clip!r}: use before_nms or after_nms")
    b, _, k = logits.shape
    device = logits.device
    all_boxes, all_scores, all_labels, all_img = [], [], [], []
    start = 0
    for level, lvl_anchors in enumerate(anchors):
        n = len(lvl_anchors)
        scores = logits[:, start:start + n].float().sigmoid().reshape(b, -1)  # (B, n*K)
        lvl_deltas = deltas[:, start:start + n]
        start += n
        top = min(topk_candidates, scores.shape[1])
        s, flat = scores.topk(top, dim=1)
        anchor_idx, label = flat // k, flat % k
        img = torch.arange(b, device=device)[:, None].expand_as(flat)
        keep = s > (score_thresh_per_level[level] if score_thresh_per_level else score_thresh)
        s, anchor_idx, label, img = s[keep], anchor_idx[keep], label[keep], img[keep]
        boxes = box_coder.decode(lvl_deltas[img, anchor_idx], lvl_anchors[anchor_idx])
        all_boxes.append(boxes), all_scores.append(s), all_labels.append(label), all_img.append(img)
    boxes, scores = torch.cat(all_boxes), torch.cat(all_scores)
    labels, img = torch.cat(all_labels), torch.cat(all_img)
    sizes = torch.tensor(image_sizes, device=device, dtype=boxes.dtype)[img]  # (N, 2) h, w
    raw = boxes
    boxes = torch.stack([
        boxes[:, 0].clamp(min=0).minimum(sizes[:, 1]), boxes[:, 1].clamp(min=0).minimum(sizes[:, 0]),
        boxes[:, 2].clamp(min=0).minimum(sizes[:, 1]), boxes[:, 3].clamp(min=0).minimum(sizes[:, 0]),
    ], dim=1)
    # Offsetting by image as well as class makes one NMS call serve the whole batch.
    keep = batched_nms(boxes if clip == "before_nms" else raw, scores, img * k + labels, nms_thresh)
    results = []
    for i in range(b):
        sel = keep[img[keep] == i][:detections_per_image]  # keep is sorted by score
        results.append({"boxes": boxes[sel], "scores": scores[sel], "labels": labels[sel]})
    return results
