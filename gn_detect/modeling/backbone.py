"""ResNet backbone built from torchvision's residual blocks, with the norm injected per build.

State-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...) whatever the
norm, so a torchvision checkpoint loads by name and keys never change with the norm type
(``bn1`` is then just a slot name: it holds a GroupNorm when ``norm: gn``).

GN followed by ReLU is fused: a GN-family norm in a slot whose output goes straight into ReLU
(the stem's ``bn1``, each block's ``bn1``, and a Bottleneck's ``bn2``) is replaced by a
``GroupNormAct`` holding the same Parameters, and the blocks' forward skips the separate ReLU
there. Keys and numbers are unchanged; with the Triton GN kernel it saves one read and one
write of the activation per slot.
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn
from torchvision.models import resnet as tv_resnet

from gn_detect.layers import GroupNormAct, convert_ws, get_norm, split_norm_name


def _norm_relu(norm: nn.Module, relu: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """relu(norm(x)), where ``norm`` may already apply the ReLU (a fused GroupNormAct)."""
    x = norm(x)
    return x if isinstance(norm, GroupNormAct) and norm.act == "relu" else relu(x)


class BasicBlock(tv_resnet.BasicBlock):
    """torchvision's block (same children and keys); ``bn1`` may be a fused GN + ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_relu(self.bn1, self.relu, self.conv1(x))
        out = self.bn2(self.conv2(out))
        out += identity
        return self.relu(out)


class Bottleneck(tv_resnet.Bottleneck):
    """torchvision's block (same children and keys); ``bn1``/``bn2`` may be fused GN + ReLU."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = _norm_relu(self.bn1, self.relu, self.conv1(x))
        out = _norm_relu(self.bn2, self.relu, self.conv2(out))
        out = self.bn3(self.conv3(out))
        out += identity
        return self.relu(out)


def fuse_gn_relu(model: nn.Module) -> int:
    """Turn each GN in a slot followed by ReLU (stem ``bn1``, block ``bn1``, Bottleneck ``bn2``)
    into a ``GroupNormAct`` sharing its Parameters; returns how many were fused."""
    slots = [(model, "bn1")] if isinstance(getattr(model, "relu", None), nn.ReLU) else []
    for m in model.modules():
        if isinstance(m, (BasicBlock, Bottleneck)):
            slots += [(m, "bn1"), (m, "bn2")] if isinstance(m, Bottleneck) else [(m, "bn1")]
    fused = 0
    for parent, name in slots:
        norm = getattr(parent, name)
        if isinstance(norm, nn.GroupNorm) and not isinstance(norm, GroupNormAct):
            setattr(parent, name, GroupNormAct.from_group_norm(norm, act="relu"))
            fused += 1
    return fused

_SPECS: dict[str, tuple[type[nn.Module], tuple[int, ...], tuple[int, ...]]] = {
    # depth: (block, blocks per stage, stage widths before expansion)
    "tiny": (BasicBlock, (1, 1, 1, 1), (32, 64, 128, 256)),
    "18": (BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512)),
    "34": (BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512)),
    "50": (Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512)),
    "101": (Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512)),
}


class ResNet(nn.Module):
    """Returns C3, C4, C5 (strides 8, 16, 32).

    ``freeze_at=k`` freezes the stem (k>=1) and the first k-1 residual stages: their parameters
    get no gradient and their norms stay in eval mode through ``train()``, so "frozen" means
    the same for BN (running statistics fixed) as for GN or AffineChannel.
    """

    def __init__(
        self,
        block: type[nn.Module],
        layers: Sequence[int],
        widths: Sequence[int],
        norm_layer: Callable[[int], nn.Module],
        freeze_at: int = 0,
        zero_init_residual: bool = False,
    ) -> None:
        super().__init__()
        self._norm_layer = norm_layer
        self.inplanes = widths[0]
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = norm_layer(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0], stride=1)
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        exp = getattr(block, "expansion", 1)
        self.out_channels = {"c3": widths[1] * exp, "c4": widths[2] * exp, "c5": widths[3] * exp}
        del self._norm_layer

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block then starts as identity, which helps from-scratch training (Goyal et al.).
            for m in self.modules():
                last = getattr(m, "bn3", None) if isinstance(m, Bottleneck) else getattr(m, "bn2", None)
                if isinstance(m, (BasicBlock, Bottleneck)) and getattr(last, "weight", None) is not None:
                    if isinstance(last.weight, nn.Parameter):
                        nn.init.zeros_(last.weight)
        fuse_gn_relu(self)
        self._frozen: list[nn.Module] = []
        self.freeze(freeze_at)

    def freeze(self, freeze_at: int) -> None:
        self.freeze_at = freeze_at
        stages = [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]
        self._frozen = stages[:freeze_at]
        for stage in self._frozen:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def _make_layer(self, block: type[nn.Module], planes: int, blocks: int, stride: int) -> nn.Sequential:
        exp = getattr(block, "expansion", 1)
        downsample = None
        if stride != 1 or self.inplanes != planes * exp:
            downsample = nn.Sequential(
                nn.Conv2d(self.inplanes, planes * exp, kernel_size=1, stride=stride, bias=False),
                self._norm_layer(planes * exp),
            )
        mods = [block(self.inplanes, planes, stride, downsample, norm_layer=self._norm_layer)]
        self.inplanes = planes * exp
        mods += [block(self.inplanes, planes, norm_layer=self._norm_layer) for _ in range(1, blocks)]
        return nn.Sequential(*mods)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for stage in getattr(self, "_frozen", []):
            stage.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(_norm_relu(self.bn1, self.relu, self.conv1(x)))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"c3": c3, "c4": c4, "c5": c5}


def build_resnet(
    depth: str | int = "50",
    *,
    norm: str = "affine",
    ws: bool = False,
    freeze_at: int = 0,
    norm_opts: dict[str, Any] | None = None,
    widths: Sequence[int] | None = None,
    zero_init_residual: bool = False,
) -> ResNet:
    key = str(depth)
    if key not in _SPECS:
        raise ValueError(
            f"model.backbone.depth={depth!r} is not a known ResNet; choose one of {sorted(_SPECS)}"
        )
    block, layers, default_widths = _SPECS[key]
    norm_name, implied_ws = split_norm_name(norm)
    if norm_name == "none":
        raise ValueError(
            "model.backbone.norm=none: a ResNet without normalization does not train stably; "
            "use affine (frozen, for pretrained weights), bn, syncbn, gn or gn_ws"
        )
    opts = dict(norm_opts or {})
    counter = iter(range(10**6))

    def norm_layer(channels: int) -> nn.Module:
        return get_norm(norm_name, channels, layer_name=f"backbone norm #{next(counter)}", **opts)

    model = ResNet(
        block, layers, tuple(widths or default_widths), norm_layer,
        zero_init_residual=zero_init_residual,
    )
    if ws or implied_ws:
        convert_ws(model)
    model.freeze(freeze_at)  # after the WS swap, which replaces the conv modules
    return model
