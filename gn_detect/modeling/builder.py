"""build_model: the one place a model config (schema ModelConfig) becomes a RetinaNet."""
from __future__ import annotations

import logging
from typing import Any, Mapping, Sequence

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException
from torch import nn

from gn_detect.checkpoint.detector_files import forget_read
from gn_detect.config.errors import one_line
from gn_detect.config.schema import ModelConfig
from gn_detect.layers import NORM_TYPES
from gn_detect.norms import resolve_norm
from gn_detect.modeling.anchors import AnchorGenerator
from gn_detect.modeling.box_coder import BoxCoder
from gn_detect.modeling.contract import size_divisibility
from gn_detect.modeling.detector_weights import load_detector_weights, resolve_detector_conventions
from gn_detect.modeling.registry import build_backbone
from gn_detect.modeling.fpn import FPN
from gn_detect.modeling.head import RetinaNetHead
from gn_detect.modeling.loss import RetinaNetLoss
from gn_detect.modeling.retinanet import RetinaNet
from gn_detect.modeling.weights import load_backbone_weights, resolve_conventions

log = logging.getLogger(__name__)


def model_config(cfg: Mapping[str, Any] | DictConfig) -> DictConfig:
    """``cfg`` (a dict or DictConfig holding only what differs) on the schema's defaults; an
    unknown key or a value of the wrong type fails here, naming the key."""
    try:
        return OmegaConf.merge(OmegaConf.structured(ModelConfig), cfg)  # type: ignore[return-value]
    except OmegaConfBaseException as e:
        raise ValueError(f"model.{one_line(e)}") from None


def build_model(cfg: Mapping[str, Any] | DictConfig, num_classes: int,
                class_names: Sequence[str] | None = None) -> RetinaNet:
    """cfg: the ``model`` section (see gn_detect/config/schema.py: ModelConfig); ``class_names``:
    the run's class names in label order (which class rows of ``model.weights`` are kept)."""
    cfg = model_config(cfg)
    if num_classes < 1:
        raise ValueError(f"build_model: num_classes={num_classes}; the dataset lists no categories")
    detector = resolve_detector_conventions(cfg)  # the whole-detector file's settings, before the parts are built
    norms = {part: resolve_norm(cfg, part) for part in ("backbone", "fpn", "head")}
    bb, fp, hd = cfg.backbone, cfg.fpn, cfg.head
    weights = resolve_conventions(cfg)  # model.input and stride_in_1x1 from the weights file, norm fit
    backbone = build_backbone(cfg)
    if weights is not None:
        report = load_backbone_weights(backbone, weights, norm=resolve_norm(cfg, "backbone").norm,
                                       strict=bb.weights_strict)
        log.info("loaded backbone weights from %s (%s; skipped: %s)", bb.weights, weights.describe(), report)
        backbone.freeze(backbone.freeze_at)  # loading replaces nothing, but keeps the rule in one place
    fpn = FPN(backbone.output_shape(), fp.out_channels, norm=fp.norm, ws=fp.ws,
              norm_opts=norms["fpn"].opts, top_block_in=fp.top_block_in, relu_before_p7=fp.relu_before_p7)
    anchor_generator = AnchorGenerator(**OmegaConf.to_container(cfg.anchors))
    head = RetinaNetHead(fpn.out_channels, anchor_generator.num_anchors, num_classes,
                         num_convs=hd.num_convs, num_levels=len(anchor_generator.strides), norm=hd.norm,
                         ws=hd.ws, act=hd.act, norm_opts=norms["head"].opts, prior_prob=hd.prior_prob,
                         per_level_norm=norms["head"].per_level)
    box_coder = BoxCoder()
    criterion = RetinaNetLoss(num_classes, box_coder=box_coder, **OmegaConf.to_container(cfg.loss))
    model = RetinaNet(backbone, fpn, head, anchor_generator, criterion, box_coder,
                      OmegaConf.to_container(cfg.test), OmegaConf.to_container(cfg.input))
    model.norms = norms  # each component's resolved norm, for whoever asks what was built
    model.size_divisibility = size_divisibility(cfg)  # modeling/contract.py: loaders ask the same
    if model.size_divisibility % backbone.size_divisibility:
        raise ValueError(f"model.size_divisibility: the padding multiple {model.size_divisibility} is not a multiple "
                         f"of the backbone's size_divisibility {backbone.size_divisibility}; use a multiple of it")
    if detector is not None:
        model.weights_report = load_detector_weights(model, detector, where=str(cfg.weights), mode=cfg.weights_classes,
                                                     class_names=class_names, num_classes=num_classes)
        forget_read()  # the model holds the weights now: the reader's copy would stay for the whole run
        backbone.freeze(backbone.freeze_at)
    return model


def norm_summary(model: nn.Module) -> dict[str, int]:
    """Counts norm module classes, e.g. for the run log: {"GroupNorm": 61, ...}."""
    counts: dict[str, int] = {}
    for m in model.modules():
        if isinstance(m, NORM_TYPES):
            counts[type(m).__name__] = counts.get(type(m).__name__, 0) + 1
    return counts
