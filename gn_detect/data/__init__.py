"""Data: COCO-format datasets, checks, transforms, batching, samplers, synthetic data, converters."""

from .build import build_dataset, build_transform, data_config, resolve_path, split_categories
from .checks import (
    SKIP_REASONS,
    AnnotationFileError,
    DataError,
    EmptyDatasetError,
    categories_of,
    check_same_categories,
    load_coco_json,
    validate_coco,
    write_skip_summary,
)
from .coco import CocoDetection
from .collate import collate
from .convert_dataset import ConversionError, voc_to_coco, write_coco, yolo_to_coco
from .samplers import InferenceSampler, TrainBatchSampler, build_test_loader, build_train_loader
from .synthetic import SHAPE_CLASSES, ensure_shapes_dataset
from .transforms import DetectionTransform, boxes_to_original

__all__ = [
    "SKIP_REASONS", "SHAPE_CLASSES",
    "AnnotationFileError", "ConversionError", "DataError", "EmptyDatasetError",
    "CocoDetection", "DetectionTransform", "InferenceSampler", "TrainBatchSampler",
    "boxes_to_original", "build_dataset", "build_transform", "build_test_loader", "build_train_loader",
    "categories_of", "check_same_categories", "collate", "data_config", "ensure_shapes_dataset",
    "load_coco_json", "resolve_path", "split_categories", "validate_coco", "voc_to_coco", "write_coco",
    "write_skip_summary", "yolo_to_coco",
]
