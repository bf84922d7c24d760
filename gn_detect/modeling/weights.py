"""Pretrained backbone weights into the model: the input conventions they bring, whether their
norms fit the norm asked for, and loading them (gn_detect/checkpoint reads the files).

Fit (norm table ``weights``): fused scale/shift loads into ``scale_shift`` norms only (affine);
BN statistics into ``scale_shift`` (folded, eps ``model.norm_opts.eps``) or ``batch_stats``
norms (bn, syncbn) as they are; GN weight/bias into ``group`` norms (gn, gn_ws). Any other
pairing is refused in one line naming the source, what the file holds and the fix, unless
``model.backbone.weights_strict=false``, which takes the convolutions only.
"""
from __future__ import annotations

from typing import Any

from omegaconf import DictConfig, OmegaConf
from torch import nn

from gn_detect.checkpoint import SourceWeights, WeightsError, read_weights, source_conventions
from gn_detect.checkpoint.conventions import INPUT_KEYS, norm_for
from gn_detect.checkpoint.sources import architecture
from gn_detect.config.errors import ConfigError
from gn_detect.config.schema import CHOICES
from gn_detect.norms import norm_spec, resolve_norm

__all__ = ["FITS", "norm_fits", "resolve_conventions", "load_backbone_weights"]

# what a file holds -> the norm-table ``weights`` kinds it can fill
FITS: dict[str, tuple[str, ...]] = {"scale_shift": ("scale_shift",), "batch_stats": ("scale_shift", "batch_stats"),
                                    "group": ("group",)}
_AMBIGUOUS = ("scale_shift", "group")  # weight/bias without statistics: either


def norm_fits(sw: SourceWeights, norm: str, strict: bool) -> bool:
    """True when the file's norms load into ``norm``; False when only its convolutions will
    (``strict`` false); raises WeightsError (one line) otherwise."""
    asked = norm_spec(norm).weights
    holds = sw.holds
    if holds is None and asked in _AMBIGUOUS:
        return True  # the asked norm decides what weight/bias without statistics are
    if holds is not None and asked in FITS[holds]:
        return True
    if not strict:
        return False
    fits = [norm_for(k) for k in (FITS[holds] if holds else _AMBIGUOUS)]
    raise WeightsError(
        f"{sw.path} is a {sw.describe()}, which does not fill model.backbone.norm={norm}",
        f"use norm={' or norm='.join(f for f in fits if f)} (the matching preset), or "
        "model.backbone.weights_strict=false to take the convolutions only")


def _check_input(values: dict[str, Any]) -> None:
    formats = CHOICES["model.input.format"]
    if values["format"] not in formats:
        raise ConfigError("model.input.format", f"{values['format']!r} is not one of {', '.join(formats)}")
    for key in ("pixel_mean", "pixel_std"):
        v = values[key]
        if len(v) != 3 or (key == "pixel_std" and min(v) <= 0):
            raise ConfigError(f"model.input.{key}", f"{list(v)} is not 3 values" + (" above 0" if key == "pixel_std"
                              else ""), "give one value per channel, 0-255 scale, in model.input.format order")


def resolve_conventions(model_cfg: DictConfig) -> SourceWeights | None:
    """Fills, in place, the null ``model.input.{format,pixel_mean,pixel_std}`` and
    ``model.backbone.stride_in_1x1`` of a ``model`` section from its weights file (else
    torchvision's) and checks that the file's norms fit ``model.backbone.norm``; returns the
    file read (None without one). Runs before any data is read."""
    bb = model_cfg.backbone
    sw = read_weights(bb.weights) if bb.weights else None
    if sw is not None:
        norm_fits(sw, resolve_norm(model_cfg, "backbone").norm, bb.weights_strict)
    conv = source_conventions(sw)
    values = {key: model_cfg.input[key] if model_cfg.input[key] is not None else conv[c]
              for key, c in INPUT_KEYS.items()}
    values = {k: v if isinstance(v, str) else [float(x) for x in v] for k, v in values.items()}
    _check_input(values)
    for key, value in values.items():
        OmegaConf.update(model_cfg, f"input.{key}", value, merge=False)
    if bb.stride_in_1x1 is None:
        OmegaConf.update(model_cfg, "backbone.stride_in_1x1", bool(conv["stride_in_1x1"]))
    return sw


def load_backbone_weights(backbone: nn.Module, sw: SourceWeights, *, norm: str, strict: bool) -> dict[str, list[str]]:
    """Loads ``sw`` (torchvision layout) into ``backbone``; returns {"missing", "unexpected"}.

    Norms load only when they fit (``norm_fits``); with ``strict`` a key mismatch raises,
    naming the keys; non-strict loading reports what it skipped."""
    take_norms = norm_fits(sw, norm, strict)
    own = backbone.state_dict()
    convs = {k for k in own if k.endswith(".weight") and own[k].dim() == 4}
    state = {k: v for k, v in sw.state_dict.items() if take_norms or k in convs}
    shape_errors = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                    for k, v in state.items() if k in own and own[k].shape != v.shape and own[k].numel() > 0]
    if shape_errors:
        arch = architecture(sw.state_dict)
        raise WeightsError(
            f"{sw.path} does not fit model.backbone: " + "; ".join(shape_errors[:3]),
            f"the file looks like depth={arch['depth']}, groups={arch['groups']}, "
            f"width_per_group={arch['width_per_group']}: set model.backbone.depth/groups/width_per_group to match")
    result = backbone.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")
               and (take_norms or k in convs)]
    unexpected = [k for k in result.unexpected_keys if not k.endswith("num_batches_tracked")]
    if strict and (missing or unexpected):
        whole = any(k.startswith(("fpn.", "head.")) for k in unexpected)  # e.g. torchvision's retinanet_resnet50_fpn
        raise WeightsError(
            f"{sw.path} ({sw.describe()}) does not match the backbone: missing keys ({len(missing)}): "
            f"{missing[:6]}; unexpected keys ({len(unexpected)}): {unexpected[:6]}",
            "it holds a whole detector: give it as model.weights=PATH instead (docs/weights.md)" if whole else
            "check model.backbone.depth, or set model.backbone.weights_strict=false to load what matches")
    return {"missing": missing, "unexpected": unexpected}
