"""The exported network (images -> head outputs) and the Python half of inference that stays
outside it: anchors from the padded input size, then RetinaNet's post-processing."""
from __future__ import annotations

import math

import torch
from torch import nn

from gn_detect.modeling.postprocess import postprocess

__all__ = ["HeadNetwork", "feature_shapes", "detect_from_head"]


class HeadNetwork(nn.Module):
    """``images (B, 3, H, W)`` 0-255 RGB padded batch and ``image_sizes (B, 2)`` (h, w) of each
    image in it ``-> (logits (B, A, K), deltas (B, A, 4))``: the input normalization, backbone,
    FPN and head of a RetinaNet, without anchors and post-processing (what the ONNX file holds)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.normalizer = model.normalizer
        self.backbone, self.fpn, self.head = model.backbone, model.fpn, model.head

    def forward(self, images: torch.Tensor, image_sizes: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return self.head(self.fpn(self.backbone(self.normalizer(images, image_sizes))))


def feature_shapes(padded_hw: tuple[int, int], strides: list[int]) -> list[tuple[int, int]]:
    """Pyramid level sizes for a padded input: every stride-2 layer (7x7/p3, 3x3/p1, 1x1/p0 convs,
    3x3/p1 max-pool) maps n to ceil(n / 2), so level s is ``ceil(H / s) x ceil(W / s)``."""
    h, w = padded_hw
    return [(math.ceil(h / s), math.ceil(w / s)) for s in strides]


def detect_from_head(
    model: nn.Module,
    logits: torch.Tensor,
    deltas: torch.Tensor,
    padded_hw: tuple[int, int],
    image_sizes: list[tuple[int, int]],
) -> list[dict[str, torch.Tensor]]:
    """``model``'s post-processing (its anchors, box coder and test settings) applied to head
    outputs computed elsewhere (e.g. by onnxruntime): per image ``{"boxes", "scores", "labels"}``
    in resized-image pixels, as ``model(images, image_sizes)`` returns in eval mode."""
    shapes = feature_shapes(padded_hw, model.anchor_generator.strides)
    anchors = [a.to(logits.device) for a in model.anchor_generator(shapes, tuple(padded_hw))]
    expected = sum(len(a) for a in anchors)
    if logits.shape[1] != expected or deltas.shape[1] != expected:
        raise ValueError(f"head outputs have {logits.shape[1]} anchors but a {padded_hw[0]}x{padded_hw[1]} input "
                         f"has {expected}; pass the padded input size the outputs were computed for")
    return postprocess(logits, deltas, anchors, image_sizes, model.box_coder, **model.test_cfg)
