"""Inference preparation: an eval-mode copy of a RetinaNet in which every norm with constant
statistics is folded into the convolution before it.

Folded (the conv gets ``W' = W * s[o]``, ``b' = b * s + t`` and the norm becomes ``Identity``):

* ``AffineChannel`` (``s = weight``, ``t = bias``), frozen or trainable;
* eval-mode BatchNorm: ``BatchNorm2d`` (ghost groups too: eval uses the running statistics)
  and ``SyncBatchNorm`` with running statistics
  (``s = gamma / sqrt(running_var + eps)``, ``t = beta - running_mean * s``);
* any norm registered with ``foldable=True``, through its module's ``fold_scale_shift()``.

A weight-standardized conv (``gn_detect.layers.Conv2d(ws=True)``) becomes a plain ``nn.Conv2d``
holding its standardized weight (then folded further if a foldable norm follows). GroupNorm,
LayerNorm, InstanceNorm (``GroupNorm``/``GroupNormAct``) and PN activations stay: they compute
moments of each input, so they are not a fixed linear map.

Which norms fold is the norm table's ``foldable`` (gn_detect/norms.py), each through its module's
``fold_scale_shift()``. The conv -> norm pairs are the ones a backbone lists in
``conv_norm_pairs()`` (its contract, gn_detect/modeling/contract.py) and every ``ConvNormAct``'s ``conv/norm`` (FPN and head). The head's per-level BN behind one conv shared
across levels cannot fold into that one conv: ``per_level="duplicate"`` (default) replaces the
layer by a :class:`PerLevelConvAct` holding one folded conv per level (same arithmetic per level,
more parameters), ``per_level="keep"`` leaves the conv and its BNs unfolded. Folding is done in
float64 and rounded once to the conv's dtype; which modules fold depends only on the
architecture, never on the values, so :func:`fold_model` on a freshly built model gives the same
structure (that is how ``load_folded`` rebuilds a saved folded model).
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from gn_detect.layers import NORM_TYPES, ConvNormAct, ProxyNormAct
from gn_detect.layers import Conv2d as WSConv2d
from gn_detect.modeling.contract import Backbone
from gn_detect.norms import norm_spec

__all__ = ["FOLD_PER_LEVEL", "FoldReport", "PerLevelConvAct", "fold_model", "count_state"]

FOLD_PER_LEVEL: tuple[str, ...] = ("duplicate", "keep")
_GN_REASON = "computes mean and variance of each input at run time: not a fixed linear map"


class PerLevelConvAct(nn.Module):
    """``act[level](convs[level](x))``: a head layer whose shared conv was followed by one BN per
    pyramid level, with each level's BN folded into its own copy of the conv."""

    def __init__(self, convs: list[nn.Conv2d], acts: nn.ModuleList, layer_name: str = "") -> None:
        super().__init__()
        self.convs = nn.ModuleList(convs)
        self.act = acts
        self.layer_name = layer_name

    def forward(self, x: torch.Tensor, level: int | None = None) -> torch.Tensor:
        if level is None:
            raise ValueError(f"layer {self.layer_name!r} has a conv per pyramid level: call it with level=")
        return self.act[level](self.convs[level](x))


@dataclass
class FoldReport:
    """What :func:`fold_model` did, by module name in the unfolded model (plain data)."""

    per_level: str
    folded: list[dict[str, str]] = field(default_factory=list)      # {"conv", "norm", "norm_type"}
    standardized: list[str] = field(default_factory=list)           # WS convs now plain
    duplicated: list[dict[str, Any]] = field(default_factory=list)  # {"layer", "levels"}
    kept: list[dict[str, str]] = field(default_factory=list)        # {"name", "type", "reason"}
    before: dict[str, int] = field(default_factory=dict)            # count_state of the input
    after: dict[str, int] = field(default_factory=dict)             # count_state of the result

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def count_state(model: nn.Module) -> dict[str, int]:
    """State-dict keys, parameter count (``nn.Parameter`` elements) and state-dict elements."""
    sd = model.state_dict()
    return {"state_dict_keys": len(sd), "parameters": sum(p.numel() for p in model.parameters()),
            "state_elements": sum(v.numel() for v in sd.values())}


def norm_scale_shift(norm: nn.Module) -> tuple[torch.Tensor, torch.Tensor] | None:
    """float64 per-channel ``(s, t)`` with ``norm(x) == x * s + t`` in eval mode, or None: the
    norm table decides (gn_detect/norms.py): a module built from an entry that is ``foldable``
    (its ``table_norm``) gives its own through ``fold_scale_shift()`` (None there: no fixed
    statistics, e.g. BN without running stats); any other module is not folded."""
    name = getattr(norm, "table_norm", None)
    if name is None or not norm_spec(name).foldable:
        return None
    fold = getattr(norm, "fold_scale_shift", None)
    if not callable(fold):
        raise ValueError(f"norm {name!r} is foldable in the norm table but its module {type(norm).__name__} "
                         "has no fold_scale_shift(); add it or register the norm with foldable=False")
    return fold()


def _weight64(conv: nn.Conv2d) -> torch.Tensor:
    """The weight the conv convolves with, in float64 (standardized for a WS conv)."""
    w = conv.weight.detach().double()
    if isinstance(conv, WSConv2d) and conv.ws:
        flat = w.reshape(w.shape[0], -1)
        var, mean = torch.var_mean(flat, dim=1, correction=0, keepdim=True)
        w = ((flat - mean) / torch.sqrt(var + conv.ws_eps)).reshape_as(w)
    return w


def _new_conv(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Conv2d:
    out = nn.Conv2d(conv.in_channels, conv.out_channels, conv.kernel_size, stride=conv.stride,
                    padding=conv.padding, dilation=conv.dilation, groups=conv.groups,
                    bias=bias is not None, padding_mode=conv.padding_mode,
                    device=conv.weight.device, dtype=conv.weight.dtype)
    with torch.no_grad():
        out.weight.copy_(weight.to(out.weight.dtype))
        if bias is not None:
            out.bias.copy_(bias.to(out.bias.dtype))
    return out.requires_grad_(False).eval()


def _plain(conv: nn.Conv2d) -> nn.Conv2d:
    bias = None if conv.bias is None else conv.bias.detach().double()
    return _new_conv(conv, _weight64(conv), bias)


def _folded(conv: nn.Conv2d, scale_shift: tuple[torch.Tensor, torch.Tensor]) -> nn.Conv2d:
    s, t = scale_shift
    bias = t if conv.bias is None else conv.bias.detach().double() * s + t
    return _new_conv(conv, _weight64(conv) * s.view(-1, 1, 1, 1), bias)


def _slots(model: nn.Module) -> list[tuple[str, nn.Module, str, str]]:
    """``(parent name, parent, conv attribute, norm attribute)`` of every conv -> norm pair."""
    out = []
    for name, m in model.named_modules():
        if isinstance(m, ConvNormAct):
            out.append((name, m, "conv", "norm"))
        elif isinstance(m, Backbone):  # its contract lists its pairs (modeling/contract.py)
            for conv, norm in m.conv_norm_pairs():
                parent, _, conv_attr = conv.rpartition(".")
                norm_parent, _, norm_attr = norm.rpartition(".")
                if parent != norm_parent:
                    raise ValueError(f"{type(m).__name__}.conv_norm_pairs: {conv} and {norm} must share a parent")
                out.append((_join(name, parent), m.get_submodule(parent) if parent else m, conv_attr, norm_attr))
    return out


def _join(*parts: str) -> str:
    return ".".join(p for p in parts if p)


def _fold_slot(model: nn.Module, slot: tuple[str, nn.Module, str, str], report: FoldReport) -> None:
    prefix, parent, conv_attr, norm_attr = slot
    conv, norm = getattr(parent, conv_attr), getattr(parent, norm_attr)
    conv_name, norm_name = _join(prefix, conv_attr), _join(prefix, norm_attr)
    if isinstance(norm, nn.ModuleList):
        pairs = [norm_scale_shift(n) for n in norm]
        if report.per_level == "duplicate" and all(p is not None for p in pairs):
            convs = [_folded(conv, p) for p in pairs]
            owner_name, _, attr = prefix.rpartition(".")
            owner = model.get_submodule(owner_name)
            setattr(owner, attr, PerLevelConvAct(convs, parent.act, getattr(parent, "layer_name", prefix)))
            report.folded += [{"conv": conv_name, "norm": f"{norm_name}.{i}", "norm_type": type(n).__name__}
                              for i, n in enumerate(norm)]
            report.duplicated.append({"layer": prefix, "levels": len(convs)})
            return
        if report.per_level == "keep":
            report.kept += [{"name": f"{norm_name}.{i}", "type": type(n).__name__,
                             "reason": "per-level norm after a conv shared across levels (per_level=keep)"}
                            for i, (n, p) in enumerate(zip(norm, pairs)) if p is not None]
    elif (pair := norm_scale_shift(norm)) is not None:
        setattr(parent, conv_attr, _folded(conv, pair))
        setattr(parent, norm_attr, nn.Identity())
        report.folded.append({"conv": conv_name, "norm": norm_name, "norm_type": type(norm).__name__})
        return
    if isinstance(conv, WSConv2d):
        setattr(parent, conv_attr, _plain(conv))


def _replace_custom_convs(model: nn.Module) -> None:
    """Every remaining gn_detect Conv2d becomes a plain nn.Conv2d (standardized if WS)."""
    for m in list(model.modules()):
        for child_name, child in list(m.named_children()):
            if isinstance(child, WSConv2d):
                setattr(m, child_name, _plain(child))


def _kept_norms(model: nn.Module, already: list[dict[str, str]]) -> list[dict[str, str]]:
    """Every norm module left in ``model``, with why it was not folded."""
    named = {k["name"] for k in already}
    kept = list(already)
    for name, m in model.named_modules():
        if not isinstance(m, NORM_TYPES) or name in named:
            continue
        if isinstance(m, _BatchNorm) and norm_scale_shift(m) is None:
            reason = "no running statistics: normalizes with each batch's own statistics"
        elif isinstance(m, nn.GroupNorm):
            reason = _GN_REASON
        elif isinstance(m, ProxyNormAct):
            reason = "an activation (relu between two affines): nothing linear to fold"
        else:
            reason = "not directly after a convolution it can fold into"
        kept.append({"name": name, "type": type(m).__name__, "reason": reason})
    return sorted(kept, key=lambda k: k["name"])


@torch.no_grad()
def fold_model(model: nn.Module, per_level: str = "duplicate") -> tuple[nn.Module, FoldReport]:
    """An eval-mode copy of ``model`` with every foldable norm folded and every WS conv plain,
    and the report of what was folded and what remains (module docstring). ``model`` is not
    changed. All parameters of the copy have ``requires_grad=False``."""
    if per_level not in FOLD_PER_LEVEL:
        raise ValueError(f"per_level={per_level!r}: use 'duplicate' (one folded conv per pyramid level) "
                         "or 'keep' (leave per-level BN unfolded)")
    out = copy.deepcopy(model).eval()
    report = FoldReport(per_level=per_level, before=count_state(model))
    report.standardized = sorted(n for n, m in out.named_modules() if isinstance(m, WSConv2d) and m.ws)
    for slot in _slots(out):
        _fold_slot(out, slot, report)
    _replace_custom_convs(out)
    backbone = getattr(out, "backbone", None)
    if hasattr(backbone, "freeze"):
        backbone.freeze(backbone.freeze_at)  # its frozen-stage list still named the replaced modules
    out.requires_grad_(False).eval()
    report.kept = _kept_norms(out, report.kept)
    report.after = count_state(out)
    return out, report
