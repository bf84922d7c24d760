"""A whole-detector file (``model.weights``) into the model: the conventions its source built it
with go into the model config first, then its weights load by name, the class logits kept,
matched or re-initialized (gn_detect/checkpoint/detector_files.py reads the files).

Conventions. Each key the source sets (``MappedDetector.conventions``) is taken where the config
still holds the schema's default (or already the source's value); a value that is neither is an
explicit setting that contradicts the file, refused in one line naming the key, both values and
the fix. (A setting equal to the schema default cannot be told from no setting: it takes the
source's value.) One exception: a backbone holding BN statistics also fills ``bn``/``syncbn``
(as a backbone file does), and then the source's backbone eps does not apply.

Class rows (``model.weights_classes``): ``auto`` keeps the file's rows of the run's classes when
every run class name is a class of the file (exact names; without run names, when the counts
agree), else re-initializes ``head.cls_score`` (the fresh head's std 0.01 and prior bias);
``match`` refuses instead of re-initializing; ``reinit`` always re-initializes. Everything else
loads strictly: a key of the model the file lacks, or one the model lacks, is refused.
"""
from __future__ import annotations

import logging
import math
from typing import Any, Sequence

import torch
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import nn

from gn_detect.checkpoint.detector_files import DetectorWeightsError, read_detector
from gn_detect.checkpoint.detectors import MappedDetector
from gn_detect.config.errors import ConfigError
from gn_detect.config.schema import ModelConfig
from gn_detect.modeling.weights import FITS
from gn_detect.norms import norm_spec

__all__ = ["resolve_detector_conventions", "load_detector_weights"]

log = logging.getLogger(__name__)
_CLS = "head.cls_score"
_STATS = "batch_stats"


def _plain(value: Any) -> Any:
    return OmegaConf.to_container(value) if isinstance(value, (ListConfig, DictConfig)) else value


def _same(a: Any, b: Any) -> bool:
    a, b = _plain(a), _plain(b)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_same(x, y) for x, y in zip(a, b))
    if isinstance(a, bool) or isinstance(b, bool) or a is None or b is None or isinstance(a, str) or isinstance(b, str):
        return type(a) is type(b) and a == b
    return math.isclose(float(a), float(b), rel_tol=1e-9, abs_tol=1e-12)


def _holds_statistics(md: MappedDetector) -> bool:
    return any(k.startswith("backbone.") and k.endswith("running_var") for k in md.state_dict)


def resolve_detector_conventions(model_cfg: DictConfig) -> MappedDetector | None:
    """Puts the conventions of ``model.weights`` into ``model_cfg`` in place (module docstring)
    and returns the file read (None without one). Runs before any data is read."""
    if not model_cfg.weights:
        return None
    md = read_detector(model_cfg.weights)
    defaults = OmegaConf.structured(ModelConfig)
    conventions = dict(md.conventions)
    norm = conventions.pop("backbone.norm", None)
    asked = model_cfg.backbone.norm
    if norm is not None and asked != norm and _holds_statistics(md) and norm_spec(asked).weights in FITS[_STATS] \
            and asked != defaults.backbone.norm:
        conventions = {k: v for k, v in conventions.items() if not k.startswith("backbone.norm_opts.")}
    elif norm is not None:
        conventions = {"backbone.norm": norm, **conventions}
    for key, value in conventions.items():
        current = OmegaConf.select(model_cfg, key)
        if _same(current, value):
            continue
        if not _same(current, OmegaConf.select(defaults, key)):
            raise ConfigError(f"model.{key}", f"{_plain(current)!r}, but the {md.source} file {model_cfg.weights} "
                              f"was built with {value!r}", f"drop that setting (or the preset setting it: norm=, model=) or "
                              f"give model.{key}={value!r}; model.weights brings its source's settings")
        OmegaConf.update(model_cfg, key, value, merge=False)
    return md


def _rows(md: MappedDetector, names: Sequence[str] | None, num_classes: int, mode: str,
          where: str) -> list[int] | None:
    """The file's class row of each run class, or None: re-initialize."""
    file_names = md.class_names
    if mode == "reinit":
        return None
    if names is None:
        if len(file_names) == num_classes:
            return list(range(num_classes))
        missing = f"the run has {num_classes} classes and the file {len(file_names)} rows"
    else:
        index = {n: i for i, n in enumerate(file_names) if n is not None}
        absent = [n for n in names if n not in index]
        if not absent:
            return [index[n] for n in names]
        missing = f"{len(absent)} run class(es) are not classes of the file (e.g. {', '.join(map(repr, absent[:3]))})"
    if mode == "match":
        raise DetectorWeightsError(f"{where}: model.weights_classes=match, but {missing}",
                                   "use model.weights_classes=auto or reinit to re-initialize the class logits")
    return None


def load_detector_weights(model: nn.Module, md: MappedDetector, *, where: str, mode: str,
                          class_names: Sequence[str] | None, num_classes: int) -> dict[str, Any]:
    """Loads ``md`` into ``model`` (module docstring); returns what was loaded, kept, dropped
    and re-initialized (the run folder's weights_loaded.json)."""
    state = dict(md.state_dict)
    weight, bias = state.pop(f"{_CLS}.weight", None), state.pop(f"{_CLS}.bias", None)
    if weight is None or bias is None:
        raise DetectorWeightsError(f"{where}: holds no {_CLS} (class logits)", "give a whole-detector file")
    rows = _rows(md, class_names, num_classes, mode, where)
    file_rows = len(md.class_names)
    if rows is not None:
        anchors = weight.shape[0] // file_rows
        state[f"{_CLS}.weight"] = weight.reshape(anchors, file_rows, *weight.shape[1:])[:, rows].reshape(
            anchors * len(rows), *weight.shape[1:])
        state[f"{_CLS}.bias"] = bias.reshape(anchors, file_rows)[:, rows].reshape(-1)
    own = model.state_dict()
    shapes = [f"{k}: file {tuple(v.shape)} vs model {tuple(own[k].shape)}"
              for k, v in state.items() if k in own and own[k].shape != v.shape]
    if shapes:
        raise DetectorWeightsError(f"{where} does not fit the model: " + "; ".join(shapes[:3]),
                                   "leave the model.* settings the file brings at their defaults")
    result = model.load_state_dict(state, strict=False)
    missing = [k for k in result.missing_keys if not k.endswith("num_batches_tracked")
               and not k.startswith("criterion.") and not (rows is None and k.startswith(_CLS + "."))]
    if missing or result.unexpected_keys:
        raise DetectorWeightsError(
            f"{where} ({md.source}) does not match the model: missing keys ({len(missing)}): {missing[:4]}; "
            f"unexpected keys ({len(result.unexpected_keys)}): {result.unexpected_keys[:4]}",
            "leave the model.* settings the file brings at their defaults")
    run = list(class_names) if class_names is not None else [None] * num_classes
    kept = [] if rows is None else [{"class": n, "file_row": r, "file_class": md.class_names[r]}
                                    for n, r in zip(run, rows)]
    used = set(rows or [])
    report = {"file": where, "source": md.source, "loaded": sorted(state), "ignored": list(md.ignored),
              "class_rows": {"switch": mode, "file_rows": file_rows, "run_classes": run,
                             "kept": kept, "reinitialized": run if rows is None else [],
                             "dropped": [{"file_row": i, "file_class": n} for i, n in enumerate(md.class_names)
                                         if i not in used]}}
    log.info("model.weights: loaded %d tensors from %s (%s); class logits: %s", len(state), where, md.source,
             f"{len(rows)} row(s) kept of the file's {file_rows}" if rows is not None
             else f"re-initialized for {num_classes} class(es), the file's {file_rows} rows dropped")
    return report
