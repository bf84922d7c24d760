"""RetinaNet training targets and losses, computed for the whole batch at once.

Ground truth is padded to the largest count in the batch so anchor matching, focal loss and
box loss are single tensor ops over (images, anchors); no Python loop over images.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

from gn_detect.modeling.box_coder import BoxCoder


def pad_targets(targets: list[dict[str, torch.Tensor]], device: torch.device) -> tuple[torch.Tensor, ...]:
    """-> boxes (B, M, 4), labels (B, M), valid (B, M); M >= 1 so shapes stay non-empty."""
    m = max([len(t["boxes"]) for t in targets] + [1])
    b = len(targets)
    boxes = torch.zeros(b, m, 4, device=device)
    labels = torch.zeros(b, m, dtype=torch.long, device=device)
    valid = torch.zeros(b, m, dtype=torch.bool, device=device)
    for i, t in enumerate(targets):  # a copy per image; the math below is batched
        n = len(t["boxes"])
        if n:
            boxes[i, :n] = t["boxes"].to(device, torch.float32)
            labels[i, :n] = t["labels"].to(device)
            valid[i, :n] = True
    return boxes, labels, valid


def batched_box_iou(anchors: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """anchors (A, 4), boxes (B, M, 4) -> IoU (B, A, M)."""
    a = anchors[None, :, None, :]
    g = boxes[:, None, :, :]
    lt = torch.maximum(a[..., :2], g[..., :2])
    rb = torch.minimum(a[..., 2:], g[..., 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (anchors[:, 2:] - anchors[:, :2]).prod(-1)[None, :, None]
    area_g = (boxes[..., 2:] - boxes[..., :2]).clamp(min=0).prod(-1)[:, None, :]
    return inter / (area_a + area_g - inter).clamp(min=1e-9)


class RetinaNetLoss(nn.Module):
    """Focal loss + smooth-L1 (or GIoU) box loss, normalized by the number of positive anchors.

    ``normalizer="ema"`` divides by an exponential moving average of the positive count
    (detectron2's choice; momentum 0.9): the per-batch count swings with the number of objects
    and makes the effective learning rate noisy at 1-2 images per device. ``"batch"`` divides
    by this batch's count. The average is a buffer, so it is checkpointed and resumed exactly.
    """

    def __init__(
        self,
        num_classes: int,
        *,
        box_coder: BoxCoder,
        fg_iou: float = 0.5,
        bg_iou: float = 0.4,
        allow_low_quality_matches: bool = True,
        focal_alpha: float = 0.25,
        focal_gamma: float = 2.0,
        box_loss: str = "smooth_l1",
        smooth_l1_beta: float = 0.1,
        box_weight: float = 1.0,
        normalizer: str = "ema",
        normalizer_momentum: float = 0.9,
    ) -> None:
        super().__init__()
        if box_loss not in ("smooth_l1", "giou"):
            raise ValueError(f"model.loss.box_loss={box_loss!r}: use 'smooth_l1' or 'giou'")
        if normalizer not in ("ema", "batch"):
            raise ValueError(f"model.loss.normalizer={normalizer!r}: use 'ema' or 'batch'")
        if not bg_iou <= fg_iou:
            raise ValueError(f"model.loss: bg_iou={bg_iou} must not exceed fg_iou={fg_iou}")
        self.num_classes = num_classes
        self.box_coder = box_coder
        self.fg_iou, self.bg_iou = fg_iou, bg_iou
        self.allow_low_quality_matches = allow_low_quality_matches
        self.focal_alpha, self.focal_gamma = focal_alpha, focal_gamma
        self.box_loss, self.smooth_l1_beta, self.box_weight = box_loss, smooth_l1_beta, box_weight
        self.normalizer, self.momentum = normalizer, normalizer_momentum
        self.register_buffer("num_pos_ema", torch.tensor(100.0))

    @torch.no_grad()
    def match(self, anchors: torch.Tensor, boxes: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """-> matched gt index (B, A), foreground mask (B, A), counted (fg or bg) mask (B, A)."""
        iou = batched_box_iou(anchors, boxes)
        iou = iou.masked_fill(~valid[:, None, :], -1.0)
        best, idx = iou.max(dim=2)
        fg = best >= self.fg_iou
        counted = fg | (best < self.bg_iou)
        if self.allow_low_quality_matches:
            # Every gt keeps the anchors that overlap it best, even below fg_iou (Detectron's rule).
            gt_best = iou.max(dim=1).values  # (B, M)
            low = ((iou == gt_best[:, None, :]) & valid[:, None, :] & (gt_best[:, None, :] > 0)).any(dim=2)
            fg = fg | low
            counted = counted | low
        return idx, fg, counted

    def forward(
        self,
        logits: torch.Tensor,
        deltas: torch.Tensor,
        anchors: torch.Tensor,
        targets: list[dict[str, torch.Tensor]],
    ) -> dict[str, torch.Tensor]:
        boxes, labels, valid = pad_targets(targets, logits.device)
        idx, fg, counted = self.match(anchors, boxes, valid)
        matched_boxes = torch.gather(boxes, 1, idx[..., None].expand(-1, -1, 4))
        matched_labels = torch.gather(labels, 1, idx)

        num_pos = fg.sum().float()
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            num_pos = num_pos.clone()
            torch.distributed.all_reduce(num_pos)
            num_pos = num_pos / torch.distributed.get_world_size()
        if self.normalizer == "ema" and self.training:
            self.num_pos_ema.mul_(self.momentum).add_((1 - self.momentum) * num_pos.clamp(min=1))
            norm = self.num_pos_ema.clone()
        elif self.normalizer == "ema":
            norm = self.num_pos_ema.clone()
        else:
            norm = num_pos.clamp(min=1)

        logits = logits.float()
        cls_target = F.one_hot(matched_labels, self.num_classes).to(logits.dtype) * fg[..., None]
        focal = sigmoid_focal_loss(logits, cls_target, alpha=self.focal_alpha, gamma=self.focal_gamma,
                                   reduction="none")
        loss_cls = (focal * counted[..., None]).sum() / norm

        anchors_b = anchors[None].expand_as(matched_boxes)
        pred = deltas.float()[fg]
        if self.box_loss == "smooth_l1":
            target = self.box_coder.encode(anchors_b[fg], matched_boxes[fg])
            loss_box = F.smooth_l1_loss(pred, target, beta=self.smooth_l1_beta, reduction="sum")
        else:
            decoded = self.box_coder.decode(pred, anchors_b[fg])
            loss_box = generalized_box_iou_loss(decoded, matched_boxes[fg], reduction="sum")
        return {"loss_cls": loss_cls, "loss_box": self.box_weight * loss_box / norm}
