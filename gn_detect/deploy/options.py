"""Typed configs of tools/export.py and tools/predict.py, their Hydra registration and their
start-up checks (one line naming the key and the fix, before any model is loaded)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig

from gn_detect.config import ConfigError, check_output_path
from gn_detect.runs import run_subfolder
from gn_detect.runs.layout import EXPORT, final_checkpoint_example

from .fold import FOLD_PER_LEVEL
from .onnx_export import MIN_OPSET, missing_onnx_packages

__all__ = ["EXPORT_SCHEMA", "PREDICT_SCHEMA", "ExportConfig", "PredictConfig", "register_deploy_schemas",
           "validate_export_config", "validate_predict_config"]

EXPORT_SCHEMA = "gn_detect_export_schema"
PREDICT_SCHEMA = "gn_detect_predict_schema"


@dataclass
class ExportConfig:
    checkpoint: Optional[str] = None     # <run>/checkpoints/model_final.pth (required)
    out_dir: Optional[str] = None        # null: <run folder>/export
    per_level: str = "duplicate"         # head BN per level: duplicate the shared conv per level, or keep
    onnx: bool = True                    # also write model.onnx and compare onnxruntime
    opset: int = 18                      # ONNX opset (>= 18)
    num_check_images: int = 3            # validation images compared in export_check.json


@dataclass
class PredictConfig:
    checkpoint: Optional[str] = None     # a run's checkpoints/model_final.pth or export/model_folded.pt (required)
    input: Optional[str] = None          # an image file or a folder of images, subfolders included (required)
    output: Optional[str] = None         # folder for detections.json, images.json and drawn/ (required)
    score_thresh: Optional[float] = None  # one threshold for every class; null: the run's tuned thresholds
    report: Optional[str] = None         # report.json with the tuned thresholds; null: <run folder>/report.json
    thresholds: Optional[str] = None     # a json {class name: threshold in [0, 1] or null (never)}: those classes'
                                         # thresholds; the others' from score_thresh, else the report
    batch_size: int = 4                  # images per forward (grouped by size)
    device: str = "auto"                 # auto: cuda when available, else cpu
    draw: bool = True                    # write one drawn image per input under <output>/drawn/


def register_deploy_schemas() -> None:
    """Idempotent; configs/export.yaml and configs/predict.yaml name these in their defaults."""
    cs = ConfigStore.instance()
    cs.store(name=EXPORT_SCHEMA, node=ExportConfig)
    cs.store(name=PREDICT_SCHEMA, node=PredictConfig)


def validate_export_config(cfg: DictConfig, world_size: int = 1) -> None:
    """tools/export.py: a checkpoint is required; per_level, opset, the ONNX packages and a
    writable out_dir (given, or the default next to an existing checkpoint)."""
    if not cfg.checkpoint:
        raise ConfigError("checkpoint", "is required", f"give checkpoint={final_checkpoint_example()}")
    if cfg.per_level not in FOLD_PER_LEVEL:
        raise ConfigError("per_level", f"{cfg.per_level!r} is not one of {', '.join(FOLD_PER_LEVEL)}")
    if cfg.opset < MIN_OPSET:
        raise ConfigError("opset", f"{cfg.opset} is too old for torch's exporter", f"use opset>={MIN_OPSET}")
    if cfg.num_check_images < 1:
        raise ConfigError("num_check_images", f"{cfg.num_check_images}: the check needs at least one image",
                          "use num_check_images=3")
    missing = missing_onnx_packages()
    if cfg.onnx and missing:
        raise ConfigError("onnx", f"ONNX export needs {', '.join(missing)} (not installed)",
                          "pip install -e \".[export]\", or onnx=false to skip the ONNX file")
    checkpoint = Path(cfg.checkpoint).expanduser().absolute()
    if cfg.out_dir or checkpoint.is_file():  # default <run folder>/export; a missing checkpoint is said later
        check_output_path("out_dir", cfg.out_dir or run_subfolder(checkpoint, EXPORT))


def validate_predict_config(cfg: DictConfig, world_size: int = 1) -> None:
    """tools/predict.py: checkpoint, input and output are required; the input must exist and the
    output folder be writable (or creatable)."""
    examples = {"checkpoint": f"checkpoint={final_checkpoint_example()}",
                "input": "input=<image folder or file>", "output": "output=<folder for the results>"}
    for key, example in examples.items():
        if not cfg[key]:
            raise ConfigError(key, "is required", f"give {example}")
    if not Path(cfg.input).expanduser().exists():
        raise ConfigError("input", f"{cfg.input} does not exist", "give an image file or a folder of images")
    check_output_path("output", cfg.output)
    src, dst = Path(cfg.input).expanduser().resolve(), Path(cfg.output).expanduser().resolve()
    if src == dst or dst in src.parents:  # an output inside the input is left out of the input instead
        raise ConfigError("output", f"{cfg.output} is (or holds) the input {cfg.input}: the drawn images would be "
                          "read back as input", "give an output folder outside the input, e.g. output=predictions")
    if cfg.score_thresh is not None and not 0.0 <= cfg.score_thresh <= 1.0:
        raise ConfigError("score_thresh", f"{cfg.score_thresh} is not a probability",
                          "use a value in [0, 1], or null for the run's tuned thresholds")
    if cfg.thresholds and not Path(cfg.thresholds).expanduser().is_file():
        raise ConfigError("thresholds", f"{cfg.thresholds} is not a file",
                          'give a json {"class name": threshold in [0, 1] or null}, or a run\'s report.json')
    if cfg.batch_size < 1:
        raise ConfigError("batch_size", f"{cfg.batch_size} must be at least 1", "use batch_size=4")
    if cfg.device not in ("auto", "cpu") and not cfg.device.startswith("cuda"):
        raise ConfigError("device", f"{cfg.device!r} is not a device", "use auto, cpu, cuda or cuda:<index>")


register_deploy_schemas()
