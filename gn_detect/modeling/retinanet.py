"""RetinaNet meta-architecture: backbone -> FPN -> head, with training loss and inference."""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gn_detect.layers.conv import ws_forward_cache
from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.loss import RetinaNetLoss
from gn_detect.modeling.postprocess import postprocess


class RetinaNet(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        fpn: nn.Module,
        head: nn.Module,
        anchor_generator: AnchorGenerator,
        criterion: RetinaNetLoss,
        box_coder: BoxCoder,
        test_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.anchor_generator = anchor_generator
        self.criterion = criterion
        self.box_coder = box_coder
        self.test_cfg = dict(test_cfg or {})

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """Training: losses. Eval: per image {"boxes", "scores", "labels"} in input pixels."""
        with ws_forward_cache():  # each WS weight standardized once, though the head runs per level
            feats = self.fpn(self.backbone(images))
            logits, deltas = self.head(feats)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in feats])
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in training mode needs targets; call model.eval() for inference")
            return self.criterion(logits, deltas, torch.cat(anchors), targets)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return postprocess(logits, deltas, anchors, image_sizes, self.box_coder, **self.test_cfg)
