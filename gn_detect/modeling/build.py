"""build_model: the one place a config becomes a RetinaNet; every bad choice fails here."""
from __future__ import annotations

import logging
from typing import Any, Mapping

from torch import nn

from gn_detect.layers import check_syncbn_usable, split_norm_name
from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.backbone import build_resnet
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.fpn import FPN
from gn_detect.modeling.head import RetinaNetHead
from gn_detect.modeling.loss import RetinaNetLoss
from gn_detect.modeling.retinanet import RetinaNet
from gn_detect.modeling.weights import load_backbone_weights

log = logging.getLogger(__name__)

_KEYS = {
    "": {"name", "backbone", "fpn", "head", "anchors", "loss", "test", "norm_opts"},
    "backbone": {"depth", "norm", "ws", "freeze_at", "weights", "weights_strict", "widths",
                 "zero_init_residual", "norm_opts"},
    "fpn": {"out_channels", "norm", "ws", "top_block_in", "norm_opts"},
    "head": {"num_convs", "norm", "ws", "act", "prior_prob", "norm_opts"},
    "anchors": {"sizes", "strides", "scales", "ratios", "offset"},
    "loss": {"fg_iou", "bg_iou", "allow_low_quality_matches", "focal_alpha", "focal_gamma", "box_loss",
             "smooth_l1_beta", "box_weight", "normalizer", "normalizer_momentum"},
    "test": {"score_thresh", "topk_candidates", "nms_thresh", "detections_per_image"},
}


def _plain(cfg: Any) -> dict[str, Any]:
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:  # omegaconf is a dependency, but the builder works on plain dicts too
        pass
    return {k: (_plain(v) if isinstance(v, Mapping) else v) for k, v in dict(cfg).items()}


def _check_keys(cfg: dict[str, Any]) -> None:
    # A typo such as model.fpn.nrom=gn would otherwise silently train the default.
    for section, allowed in _KEYS.items():
        sub = cfg if section == "" else (cfg.get(section) or {})
        unknown = sorted(set(sub) - allowed)
        if unknown:
            where = f"model.{section}" if section else "model"
            raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys are {sorted(allowed)}")


def build_model(cfg: Mapping[str, Any], num_classes: int) -> RetinaNet:
    """cfg: the ``model`` section of the config (dict or DictConfig)."""
    cfg = _plain(cfg)
    _check_keys(cfg)
    if num_classes < 1:
        raise ValueError(f"build_model: num_classes={num_classes}; the dataset lists no categories")
    shared_opts = cfg.get("norm_opts") or {}
    bb, fp, hd = cfg.get("backbone") or {}, cfg.get("fpn") or {}, cfg.get("head") or {}
    parts = {"backbone": (bb, "affine"), "fpn": (fp, "none"), "head": (hd, "none")}
    names = {p: split_norm_name(c.get("norm", d), layer_name=f"model.{p}.norm")[0] for p, (c, d) in parts.items()}
    if "syncbn" in names.values():
        check_syncbn_usable()

    def opts(c: dict[str, Any]) -> dict[str, Any]:
        return {**shared_opts, **(c.get("norm_opts") or {})}

    backbone = build_resnet(
        bb.get("depth", "50"), norm=bb.get("norm", "affine"), ws=bool(bb.get("ws", False)),
        freeze_at=int(bb.get("freeze_at", 0)), norm_opts=opts(bb), widths=bb.get("widths"),
        zero_init_residual=bool(bb.get("zero_init_residual", False)),
    )
    if bb.get("weights"):
        report = load_backbone_weights(backbone, bb["weights"], strict=bool(bb.get("weights_strict", True)))
        log.info("loaded backbone weights from %s (skipped: %s)", bb["weights"], report)
        backbone.freeze(backbone.freeze_at)  # loading replaces nothing, but keeps the rule in one place
    fpn = FPN(
        backbone.out_channels, int(fp.get("out_channels", 256)), norm=fp.get("norm", "none"),
        ws=bool(fp.get("ws", False)), norm_opts=opts(fp), top_block_in=fp.get("top_block_in", "p5"),
    )
    an = cfg.get("anchors") or {}
    anchor_generator = AnchorGenerator(**an)
    head = RetinaNetHead(
        fpn.out_channels, anchor_generator.num_anchors, num_classes,
        num_convs=int(hd.get("num_convs", 4)), num_levels=len(anchor_generator.strides),
        norm=hd.get("norm", "none"), ws=bool(hd.get("ws", False)), act=hd.get("act", "relu"),
        norm_opts=opts(hd), prior_prob=float(hd.get("prior_prob", 0.01)),
    )
    box_coder = BoxCoder()
    criterion = RetinaNetLoss(num_classes, box_coder=box_coder, **(cfg.get("loss") or {}))
    return RetinaNet(backbone, fpn, head, anchor_generator, criterion, box_coder, cfg.get("test") or {})


def norm_summary(model: nn.Module) -> dict[str, int]:
    """Counts norm module classes, e.g. for the run log: {"GroupNorm": 61, ...}."""
    counts: dict[str, int] = {}
    from gn_detect.layers import NORM_TYPES

    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts
