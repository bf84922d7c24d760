"""RetinaNet/FPN: backbone, pyramid, head, anchors, loss, post-processing and the builder."""
from gn_detect.modeling.builder import build_model, norm_summary
from gn_detect.modeling.contract import Backbone, ShapeSpec, size_divisibility
from gn_detect.modeling.retinanet import RetinaNet
from gn_detect.modeling.weights import load_backbone_weights

__all__ = ["build_model", "norm_summary", "size_divisibility", "Backbone", "ShapeSpec", "RetinaNet", "load_backbone_weights"]
