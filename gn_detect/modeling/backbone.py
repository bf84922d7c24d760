"""ResNet / ResNeXt backbone (registered as ``model.backbone.name=resnet``), norm injected per build.

State-dict keys are torchvision's (``conv1``, ``bn1``, ``layer1.0.conv1``, ...,
``layer1.0.downsample.{0,1}``) whatever the norm, so a torchvision checkpoint loads by name and
keys never change with the norm type (``bn1`` is then just a slot name: it holds a GroupNorm
when ``norm: gn``).

Convolutions are ``gn_detect.layers.Conv2d`` (``ws=`` for weight standardization); each norm
and the activation after it come from ``get_norm_act``, the factory FPN and head use, so a GN
followed by ReLU (stem, each block's ``bn1``, a Bottleneck's ``bn2``) is one fused
``GroupNormAct`` and the activation slot is an Identity. Activations hold no state, so the keys
are torchvision's.

ResNeXt is the Bottleneck with ``groups`` x ``width_per_group`` in its 3x3 conv (torchvision's
rule: width = planes * width_per_group / 64 * groups). ``stride_in_1x1`` puts each stage's
stride in the first 1x1 conv (MSRA / Caffe2 ResNets) instead of the 3x3 (torchvision).
"""
from __future__ import annotations

from typing import Any, Callable, Sequence

import torch
from torch import nn

from gn_detect.layers import Conv2d, get_norm_act
from gn_detect.modeling.contract import Backbone
from gn_detect.norms import norm_names, norm_spec, resolve_norm

__all__ = ["BasicBlock", "Bottleneck", "ResNet", "DEPTHS", "resnet"]

NormAct = Callable[[int, str], tuple[nn.Module, nn.Module]]  # (channels, act) -> (norm, act)


def _conv(cin: int, cout: int, k: int, stride: int, ws: bool, groups: int = 1) -> Conv2d:
    return Conv2d(cin, cout, k, stride=stride, padding=(k - 1) // 2, groups=groups, bias=False, ws=ws)


class BasicBlock(nn.Module):
    """ResNet-18/34 block: 3x3 -> 3x3, plus the shortcut (torchvision's children names)."""

    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, *,
                 norm_act: NormAct, ws: bool, groups: int = 1, width_per_group: int = 64,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        if groups != 1 or width_per_group != 64:
            raise ValueError("model.backbone.groups/width_per_group: ResNeXt needs a Bottleneck depth "
                             "(50, 101 or 152); depths tiny, 18 and 34 take groups=1, width_per_group=64")
        self.conv1 = _conv(inplanes, planes, 3, stride, ws)
        self.bn1, self.act1 = norm_act(planes, "relu")
        self.conv2 = _conv(planes, planes, 3, 1, ws)
        self.bn2 = norm_act(planes, "none")[0]
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def pairs(self) -> list[tuple[str, str]]:
        return [("conv1", "bn1"), ("conv2", "bn2")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """1x1 -> 3x3 (grouped for ResNeXt) -> 1x1 (x4 channels), plus the shortcut."""

    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None, *,
                 norm_act: NormAct, ws: bool, groups: int = 1, width_per_group: int = 64,
                 stride_in_1x1: bool = False) -> None:
        super().__init__()
        width = int(planes * (width_per_group / 64.0)) * groups
        s1, s3 = (stride, 1) if stride_in_1x1 else (1, stride)
        self.conv1 = _conv(inplanes, width, 1, s1, ws)
        self.bn1, self.act1 = norm_act(width, "relu")
        self.conv2 = _conv(width, width, 3, s3, ws, groups=groups)
        self.bn2, self.act2 = norm_act(width, "relu")
        self.conv3 = _conv(width, planes * self.expansion, 1, 1, ws)
        self.bn3 = norm_act(planes * self.expansion, "none")[0]
        self.downsample = downsample
        self.relu = nn.ReLU(inplace=True)

    def pairs(self) -> list[tuple[str, str]]:
        return [("conv1", "bn1"), ("conv2", "bn2"), ("conv3", "bn3")]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.act1(self.bn1(self.conv1(x)))
        out = self.act2(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


# depth: (block, blocks per stage, stage widths before expansion)
DEPTHS: dict[str, tuple[type[nn.Module], tuple[int, ...], tuple[int, ...]]] = {
    "tiny": (BasicBlock, (1, 1, 1, 1), (32, 64, 128, 256)),
    "18": (BasicBlock, (2, 2, 2, 2), (64, 128, 256, 512)),
    "34": (BasicBlock, (3, 4, 6, 3), (64, 128, 256, 512)),
    "50": (Bottleneck, (3, 4, 6, 3), (64, 128, 256, 512)),
    "101": (Bottleneck, (3, 4, 23, 3), (64, 128, 256, 512)),
    "152": (Bottleneck, (3, 8, 36, 3), (64, 128, 256, 512)),
}
_OUT = ("c3", "c4", "c5")
_STRIDES = {"c3": 8, "c4": 16, "c5": 32}


class ResNet(Backbone):
    """Returns C3, C4, C5 (``strides`` 8, 16, 32; ``out_channels`` per key).

    ``freeze_at=k`` freezes the stem (k>=1) and the first k-1 residual stages: their parameters
    get no gradient and their norms stay in eval mode through ``train()``, so "frozen" means
    the same for BN (running statistics fixed) as for GN or AffineChannel.
    """

    def __init__(self, block: type[nn.Module], layers: Sequence[int], widths: Sequence[int], *,
                 norm_act: NormAct, ws: bool, freeze_at: int, zero_init_residual: bool,
                 groups: int, width_per_group: int, stride_in_1x1: bool) -> None:
        super().__init__()
        shape = {"norm_act": norm_act, "ws": ws, "groups": groups, "width_per_group": width_per_group,
                 "stride_in_1x1": stride_in_1x1}
        self.conv1 = _conv(3, widths[0], 7, 2, ws)
        self.bn1, self.relu = norm_act(widths[0], "relu")
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        inplanes = widths[0]
        for i, (planes, blocks) in enumerate(zip(widths, layers)):
            exp, stride = block.expansion, 1 if i == 0 else 2
            downsample = None
            if stride != 1 or inplanes != planes * exp:
                downsample = nn.Sequential(_conv(inplanes, planes * exp, 1, stride, ws),
                                           norm_act(planes * exp, "none")[0])
            mods = [block(inplanes, planes, stride, downsample, **shape)]
            inplanes = planes * exp
            mods += [block(inplanes, planes, 1, None, **shape) for _ in range(1, blocks)]
            self.add_module(f"layer{i + 1}", nn.Sequential(*mods))
        exp = block.expansion
        self.out_channels = {k: widths[i + 1] * exp for i, k in enumerate(_OUT)}
        self.strides = dict(_STRIDES)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if zero_init_residual:
            # Each block then starts as identity, which helps from-scratch training (Goyal et al.).
            for m in self.modules():
                if isinstance(m, (BasicBlock, Bottleneck)):
                    last = getattr(m, m.pairs()[-1][1])
                    if isinstance(getattr(last, "weight", None), nn.Parameter):
                        nn.init.zeros_(last.weight)
        self._frozen: list[nn.Module] = []
        self.freeze(freeze_at)

    def conv_norm_pairs(self) -> list[tuple[str, str]]:
        """``(conv, norm)`` module names (relative to this module) of every conv -> norm pair."""
        out = [("conv1", "bn1")]
        for name, m in self.named_modules():
            if isinstance(m, (BasicBlock, Bottleneck)):
                out += [(f"{name}.{c}", f"{name}.{n}") for c, n in m.pairs()]
                if m.downsample is not None:
                    out.append((f"{name}.downsample.0", f"{name}.downsample.1"))
        return out

    def freeze(self, freeze_at: int) -> None:
        self.freeze_at = freeze_at
        stages = [nn.ModuleList([self.conv1, self.bn1]), self.layer1, self.layer2, self.layer3, self.layer4]
        self._frozen = stages[:freeze_at]
        for stage in self._frozen:
            for p in stage.parameters():
                p.requires_grad_(False)
        self.train(self.training)

    def train(self, mode: bool = True) -> "ResNet":
        super().train(mode)
        for stage in getattr(self, "_frozen", []):
            stage.eval()
        return self

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        c2 = self.layer1(x)
        c3 = self.layer2(c2)
        c4 = self.layer3(c3)
        c5 = self.layer4(c4)
        return {"c3": c3, "c4": c4, "c5": c5}


def resnet(model_cfg: Any) -> ResNet:
    """``model.backbone.name=resnet`` (named in modeling/registry.py): the ResNet/ResNeXt of
    ``model_cfg.backbone`` (depth, norm, ws, freeze_at, widths, groups, width_per_group,
    stride_in_1x1 (null: torchvision's False; build_model resolves it from the weights first),
    zero_init_residual)."""
    bb = model_cfg.backbone
    key = str(bb.depth)
    if key not in DEPTHS:
        raise ValueError(f"model.backbone.depth={bb.depth!r} is not a known ResNet; choose one of {list(DEPTHS)}")
    resolved = resolve_norm(model_cfg, "backbone")
    spec = norm_spec(resolved.norm)
    if not (spec.normalizes or spec.foldable):
        usable = [n for n in norm_names() if norm_spec(n).normalizes or norm_spec(n).foldable]
        raise ValueError(f"model.backbone.norm={bb.norm}: a ResNet without normalization does not train "
                         f"stably; use one of {', '.join(usable)}")
    counter = iter(range(10**6))

    def norm_act(channels: int, act: str) -> tuple[nn.Module, nn.Module]:
        return get_norm_act(resolved.norm, channels, act, layer_name=f"backbone norm #{next(counter)}",
                            **resolved.opts)

    block, layers, default_widths = DEPTHS[key]
    return ResNet(block, layers, tuple(bb.widths or default_widths), norm_act=norm_act, ws=resolved.ws,
                  freeze_at=bb.freeze_at, zero_init_residual=bb.zero_init_residual, groups=bb.groups,
                  width_per_group=bb.width_per_group, stride_in_1x1=bool(bb.stride_in_1x1))
