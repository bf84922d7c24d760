"""What the command-line pre-flight (command_line.py) checks of a valid config of tools/train.py and
tools/evaluate.py before Hydra makes a folder: the run folder, the model's layer shapes and the
annotation files (annotations.py). Nothing here opens an image, makes a folder or allocates a weight:
the model is built on PyTorch's ``meta`` device (shapes only), so a GroupNorm whose group count
does not divide a layer's channels is found in milliseconds, named with its key."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from gn_detect.config import ConfigError, check_output_path, resolve_batch
from gn_detect.config.schema import ModelConfig
from gn_detect.engine.checkpoint import CheckpointError, load_checkpoint
from gn_detect.evaluation.thresholds import class_criteria_of
from gn_detect.runs import run_subfolder
from gn_detect.runs.layout import EVALUATE
from gn_detect.runs.links import links_in_run_folder
from gn_detect.io import unwritable_folder
from gn_detect.modeling import build_model
from gn_detect.modeling.detector_weights import resolve_detector_conventions

from .annotations import Parsed, annotation_problems

__all__ = ["evaluate_problems", "train_problems"]


def _folder_problem(key: str, raw: Any) -> str | None:
    """Why the folder ``raw`` (relative to the launch folder) cannot be (or become) a run folder."""
    why = unwritable_folder(str(raw))
    return None if why is None else (f"run folder error: {key}={raw}: {why}. Fix: give another folder "
                                     f"({key}=outputs/my_run)")


def _run_folder_problems(cfg: DictConfig, multirun: bool) -> list[str]:
    hydra = cfg.get("hydra") if isinstance(cfg, DictConfig) else None
    if hydra is None:
        return []
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    try:
        raw = OmegaConf.select(cfg, key)
    except Exception:  # noqa: BLE001 - an interpolation only Hydra's job can resolve: Hydra checks it
        return []
    problem = _folder_problem(key, raw) if raw else None
    links = [] if problem or not raw else links_in_run_folder(str(raw), sweep=multirun)
    return [problem] if problem else [f"run folder error: {p} is a symbolic link (to {os.readlink(p)}): a run never "
                                      "writes through a link it did not create. Fix: remove the link, or give another "
                                      f"folder ({key}=outputs/my_run)" for p in links]


def weights_problems(model_cfg: DictConfig) -> tuple[list[str], DictConfig]:
    """``model.weights`` read (as data; the run reads it again from the reader's cache) and its
    source's settings put into a copy of the model config: (a file that cannot be used, or a
    setting that contradicts the file's, as one line; the model config the run will build)."""
    if not model_cfg.get("weights"):
        return [], model_cfg
    cfg = OmegaConf.merge(OmegaConf.structured(ModelConfig), OmegaConf.to_container(model_cfg, resolve=True))
    try:
        resolve_detector_conventions(cfg)
    except ConfigError as e:
        return [f"config error: {e}"], model_cfg
    return [], cfg


def model_problems(model_cfg: DictConfig, num_classes: int) -> list[str]:
    """The model built on the meta device (no memory, no weight file read): a layer the config
    cannot build (e.g. GroupNorm groups that do not divide its channels) is one line."""
    cfg = OmegaConf.create(OmegaConf.to_container(model_cfg, resolve=True))
    OmegaConf.update(cfg, "backbone.weights", None)  # the weight files are checked when the run loads them
    OmegaConf.update(cfg, "weights", None)
    try:
        with torch.device("meta"):
            build_model(cfg, num_classes)
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        keys = ("model.norm_opts.num_groups / channels_per_group, or model.<backbone|fpn|head>.norm_opts"
                if "group" in first.lower() else "model.*: python tools/train.py --cfg job lists them")
        return [f"config error: model: {first} (keys: {keys})"]
    return []


def class_criteria_problems(class_criteria: Any, categories: list[dict[str, Any]]) -> list[str]:
    """``eval.class_criteria`` naming a class the data (or the checkpoint's model) does not have:
    one line (evaluation/thresholds.py: class_criteria_of)."""
    if not class_criteria:
        return []
    spec = OmegaConf.to_container(class_criteria) if OmegaConf.is_config(class_criteria) else dict(class_criteria)
    try:
        class_criteria_of(spec, [str(c["name"]) for c in categories])
    except ValueError as e:
        return [f"config error: {e}"]
    return []


def train_problems(cfg: DictConfig, multirun: bool, world_size: int, parsed: Parsed) -> list[str]:
    """tools/train.py's inspect: run folder, model shapes, training and evaluation annotation files
    (a batch larger than the split: the batch the run will have, ``resolve_batch``)."""
    problems = _run_folder_problems(cfg, multirun)
    weights, model_cfg = weights_problems(cfg.model)
    if weights:  # before any annotation file is parsed (a COCO json: seconds, gigabytes)
        return problems + weights
    batch = resolve_batch(cfg, world_size)
    data, train = annotation_problems(cfg.data, train_split="train", eval_split=cfg.eval.split, base_dir=Path.cwd(),
                                      ims_per_batch=batch.ims_per_batch, parsed=parsed)
    num_classes = len(train.categories) if train is not None else 1
    classes = class_criteria_problems(cfg.eval.class_criteria, train.categories) if train is not None else []
    return problems + model_problems(model_cfg, num_classes) + data + classes


def evaluate_problems(cfg: DictConfig, multirun: bool, world_size: int, parsed: Parsed) -> list[str]:
    """tools/evaluate.py's inspect: a writable out_dir (given, or the default in the checkpoint's run
    folder), and the evaluation split's annotation file against the categories of the
    checkpoint's model (read with weights_only; its own problems are left to the command)."""
    path = Path(str(cfg.checkpoint)).expanduser()
    path = path if path.is_absolute() else Path.cwd() / path
    out_problems: list[str] = []
    if cfg.out_dir or path.is_file():  # default <run folder>/evaluate/<time>
        try:
            check_output_path("out_dir", cfg.out_dir or run_subfolder(path, EVALUATE))
        except ConfigError as e:
            out_problems = [f"config error: {e}"]
    if not path.is_file():
        return out_problems  # the command says a missing checkpoint in one line
    try:
        description = load_checkpoint(path).get("description")
    except CheckpointError:
        return out_problems
    if not isinstance(description, dict) or "config" not in description:
        return out_problems
    run = description["config"]
    if cfg.data is None and cfg.run_config:
        return out_problems  # the data section comes from run_config, read (and checked) by the command
    data_cfg = cfg.data if cfg.data is not None else run["data"]
    split = cfg.eval.split if cfg.eval.split is not None else run["eval"]["split"]
    problems, _ = annotation_problems(data_cfg, train_split=None, eval_split=split, base_dir=Path.cwd(),
                                      train_categories=description["model"]["categories"], parsed=parsed)
    criteria = {**(run["eval"].get("class_criteria") or {}), **(OmegaConf.to_container(cfg.eval.class_criteria)
                                                               if cfg.eval.class_criteria is not None else {})}
    return out_problems + problems + class_criteria_problems(criteria, description["model"]["categories"])
