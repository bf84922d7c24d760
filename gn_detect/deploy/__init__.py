"""Deployment: fold norms into convolutions, save/load the folded model, export ONNX, predict.

Entry points: tools/export.py and tools/predict.py (gn_detect/deploy/entry_points.py); configs in
gn_detect/deploy/options.py. onnx, onnxruntime and onnxscript (the ``export`` extra) are imported
only by gn_detect/deploy/onnx_export.py, when used.
"""
from .fold import FOLD_PER_LEVEL, FoldReport, PerLevelConvAct, count_state, fold_model
from .network import HeadNetwork, detect_from_head, feature_shapes
from .saved import FOLDED_FORMAT, FoldedModel, load_folded, read_folded, save_folded

__all__ = [
    "FOLDED_FORMAT",
    "FOLD_PER_LEVEL",
    "FoldReport",
    "FoldedModel",
    "HeadNetwork",
    "PerLevelConvAct",
    "count_state",
    "detect_from_head",
    "feature_shapes",
    "fold_model",
    "load_folded",
    "read_folded",
    "save_folded",
]
