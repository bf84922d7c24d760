"""Feature pyramid P3-P7 over C3-C5 (RetinaNet's variant: P6/P7 by strided convs)."""
from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from gn_detect.layers import ConvNormAct
from gn_detect.modeling.contract import ShapeSpec


def _xavier_fill(m: nn.Module) -> None:
    # detectron2's c2_xavier_fill: what Caffe2 used for FPN; keeps the pyramid's scale ~1 at init.
    for conv in m.modules():
        if isinstance(conv, nn.Conv2d):
            nn.init.kaiming_uniform_(conv.weight, a=1)
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)


class FPN(nn.Module):
    """Lateral 1x1 and output 3x3 convs each carry the FPN's norm; P6/P7 carry none.

    ``ws`` turns weight standardization on; ``norm="gn_ws"`` implies it (ws=False does not veto).

    ``input_shape``: the backbone's ``output_shape()``; its three features, shallowest first,
    are C3, C4, C5 (their names are the backbone's own).

    ``top_block_in="p5"`` feeds P6 from P5 (torchvision's v1 RetinaNet only); ``"c5"`` from C5,
    as in the paper, detectron2, torchvision v2, Detectron and mmdetection. ``relu_before_p7``:
    P7 = conv(relu(P6)) (every source); False feeds P6 itself.
    """

    def __init__(
        self,
        input_shape: dict[str, ShapeSpec],
        out_channels: int = 256,
        *,
        norm: str = "none",
        ws: bool = False,
        norm_opts: dict[str, Any] | None = None,
        top_block_in: str = "p5",
        relu_before_p7: bool = True,
    ) -> None:
        super().__init__()
        if top_block_in not in ("p5", "c5"):
            raise ValueError(f"model.fpn.top_block_in={top_block_in!r}: use 'p5' or 'c5'")
        names = tuple(sorted(input_shape, key=lambda k: input_shape[k].stride))
        if len(names) != 3:
            raise ValueError(f"FPN: the backbone gives {len(names)} features {list(names)}; it needs three (C3, C4, C5)")
        in_channels = {k: input_shape[k].channels for k in names}
        self.in_features = names
        self.lateral = nn.ModuleList(
            ConvNormAct(in_channels[n], out_channels, 1, norm=norm, ws=ws or None, act="none",
                        norm_opts=norm_opts, layer_name=f"fpn.lateral.{i}")
            for i, n in enumerate(names)
        )
        self.output = nn.ModuleList(
            ConvNormAct(out_channels, out_channels, 3, norm=norm, ws=ws or None, act="none",
                        norm_opts=norm_opts, layer_name=f"fpn.output.{i}")
            for i in range(len(names))
        )
        self.top_block_in = top_block_in
        self.relu_before_p7 = relu_before_p7
        p6_in = out_channels if top_block_in == "p5" else in_channels[names[-1]]
        self.p6 = nn.Conv2d(p6_in, out_channels, 3, stride=2, padding=1)
        self.p7 = nn.Conv2d(out_channels, out_channels, 3, stride=2, padding=1)
        self.out_channels = out_channels
        _xavier_fill(self)

    def forward(self, feats: dict[str, torch.Tensor]) -> list[torch.Tensor]:
        c3, c4, c5 = (feats[k] for k in self.in_features)
        lat5 = self.lateral[2](c5)
        lat4 = self.lateral[1](c4) + F.interpolate(lat5, size=c4.shape[-2:], mode="nearest")
        lat3 = self.lateral[0](c3) + F.interpolate(lat4, size=c3.shape[-2:], mode="nearest")
        p3, p4, p5 = self.output[0](lat3), self.output[1](lat4), self.output[2](lat5)
        p6 = self.p6(p5 if self.top_block_in == "p5" else c5)
        p7 = self.p7(F.relu(p6) if self.relu_before_p7 else p6)
        return [p3, p4, p5, p6, p7]
