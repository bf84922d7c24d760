"""Evaluation: COCOeval wrapper, box/label matching, threshold tuning, reports and figures.

Entry point: ``evaluate_detections`` (see docs/metrics.md and docs/report_schema.md).
"""

from gn_detect.evaluation.coco_eval import (
    DEFAULT_BACKEND,
    STAT_NAMES,
    CocoResult,
    available_backends,
    coco_metrics,
    coco_metrics_arrays,
)
from gn_detect.evaluation.console import format_results
from gn_detect.evaluation.events import Counts, Events, PRCurve
from gn_detect.evaluation.labels import LabelPairs, label_pairs
from gn_detect.evaluation.matching import BoxMatches, DetArrays, GroundTruth, cap_per_image, match_boxes
from gn_detect.evaluation.report import (
    HEADLINE_KEYS,
    TUNE_MODES,
    Parts,
    Prepared,
    build_report,
    evaluate_detections,
    prepare,
)
from gn_detect.evaluation.split import filter_detections, split_coco, split_image_ids, subset_coco
from gn_detect.evaluation.thresholds import Thresholds, tune_thresholds

__all__ = [
    "DEFAULT_BACKEND",
    "HEADLINE_KEYS",
    "STAT_NAMES",
    "TUNE_MODES",
    "BoxMatches",
    "CocoResult",
    "Counts",
    "DetArrays",
    "Events",
    "GroundTruth",
    "LabelPairs",
    "PRCurve",
    "Parts",
    "Prepared",
    "Thresholds",
    "available_backends",
    "build_report",
    "cap_per_image",
    "coco_metrics",
    "coco_metrics_arrays",
    "evaluate_detections",
    "filter_detections",
    "format_results",
    "label_pairs",
    "match_boxes",
    "prepare",
    "split_coco",
    "split_image_ids",
    "subset_coco",
    "tune_thresholds",
]
