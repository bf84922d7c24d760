"""RetinaNet meta-architecture: input normalization -> backbone -> FPN -> head, with training
loss and inference.

The model owns its input normalization (as detectron2's meta-architectures do): it takes a
padded batch of 0-255 RGB images (uint8 or float) and the images' sizes, puts the channels in
``input["format"]`` order, subtracts ``pixel_mean`` and divides by ``pixel_std`` (0-255, in that
order), then zeroes the padding, so padded pixels are 0 in normalized space wherever the image
sits in the batch. Mean and std are non-persistent buffers: no state-dict keys.
"""
from __future__ import annotations

from typing import Any

import torch
from torch import nn

from gn_detect.layers.conv import ws_forward_cache
from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.loss import RetinaNetLoss
from gn_detect.modeling.postprocess import postprocess


class InputNormalizer(nn.Module):
    """0-255 RGB ``images`` (B, 3, H, W) -> the backbone's input (module docstring)."""

    def __init__(self, format: str | None = None, pixel_mean: Any = None, pixel_std: Any = None) -> None:  # noqa: A002
        super().__init__()
        if format is None or pixel_mean is None or pixel_std is None:
            raise ValueError("InputNormalizer: needs format, pixel_mean and pixel_std (build_model resolves them)")
        self.format = str(format)
        self.register_buffer("pixel_mean", torch.tensor(pixel_mean, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)
        self.register_buffer("pixel_std", torch.tensor(pixel_std, dtype=torch.float32).view(1, 3, 1, 1),
                             persistent=False)

    def extra_repr(self) -> str:
        return f"format={self.format}, mean={self.pixel_mean.flatten().tolist()}, std={self.pixel_std.flatten().tolist()}"

    def forward(self, images: torch.Tensor, image_sizes: Any = None) -> torch.Tensor:
        """``image_sizes``: [(h, w)] or a (B, 2) integer tensor of each image in the padded
        batch; None: no padding."""
        x = images if images.is_floating_point() else images.to(self.pixel_mean.dtype)
        if self.format == "BGR":
            x = x.flip(1)
        x = (x - self.pixel_mean.to(x.dtype)) / self.pixel_std.to(x.dtype)
        if image_sizes is None:
            return x
        sizes = torch.as_tensor(image_sizes, device=x.device).reshape(-1, 2)
        rows = torch.arange(x.shape[-2], device=x.device)[None, :] < sizes[:, :1]
        cols = torch.arange(x.shape[-1], device=x.device)[None, :] < sizes[:, 1:]
        return x * (rows[:, None, :, None] & cols[:, None, None, :]).to(x.dtype)


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
        input_cfg: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.backbone, self.fpn, self.head = backbone, fpn, head
        self.anchor_generator = anchor_generator
        self.criterion = criterion
        self.box_coder = box_coder
        self.test_cfg = dict(test_cfg or {})
        self.normalizer = InputNormalizer(**dict(input_cfg or {}))

    def forward(
        self,
        images: torch.Tensor,
        image_sizes: list[tuple[int, int]] | None = None,
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        """``images``: padded 0-255 RGB batch; ``image_sizes``: each image's (h, w) in it (None: the
        whole batch). Training: losses. Eval: per image {"boxes", "scores", "labels"} in input pixels."""
        x = self.normalizer(images, image_sizes)
        with ws_forward_cache():  # each WS weight standardized once, though the head runs per level
            feats = self.fpn(self.backbone(x))
            logits, deltas = self.head(feats)
        anchors = self.anchor_generator([tuple(f.shape[-2:]) for f in feats], tuple(images.shape[-2:]))
        if self.training:
            if targets is None:
                raise ValueError("RetinaNet in training mode needs targets; call model.eval() for inference")
            return self.criterion(logits, deltas, torch.cat(anchors), targets)
        if image_sizes is None:
            image_sizes = [tuple(images.shape[-2:])] * images.shape[0]
        return postprocess(logits, deltas, anchors, image_sizes, self.box_coder, **self.test_cfg)
