"""``model.weights``: a whole RetinaNet file read as data, its source told from the content (never
the file name), and handed to that source's name map.

Read like backbone files (sources.py: ``torch.load(weights_only=True)``, safetensors, or the
data-only unpickler), then recognized by names:

* ``gn-detect``: a gn-detect checkpoint (``"description"`` and ``"model"``);
* ``detectron``: a Caffe2 dict (optionally in ``"blobs"``) holding ``retnet_cls_pred_fpn3_w``;
* ``detectron2``: ``backbone.bottom_up.*`` and ``head.cls_score.weight`` (optionally in ``"model"``);
* ``torchvision``: ``backbone.body.*`` and ``head.classification_head.cls_logits.weight``
  (optionally in ``"model"``/``"state_dict"``, prefixed ``module.``); v1 or v2 by content;
* ``converted``: ``{"format": CONVERTED_FORMAT, "source", "state_dict", "conventions",
  "class_names"}``, any of the above written by tools/convert_weights.py in gn-detect's names.

``DETECTOR_MAPS`` holds one map per source (torchvision_detector.py, detectron_maps.py, and the two
here).
"""
from __future__ import annotations

import functools
from pathlib import Path
from typing import Any, Callable

from omegaconf import OmegaConf

from .conventions import fill_unrecorded
from .detectors import MappedDetector
from .detectron_maps import map_detectron, map_detectron2
from .sources import WeightsError, _read_raw
from .torchvision_detector import is_torchvision_retinanet, map_torchvision
from gn_detect.config.errors import ConfigError
from gn_detect.runs import flatten

__all__ = ["CONVERTED_FORMAT", "DETECTOR_MAPS", "DetectorWeightsError", "NotADetectorError", "converted_record",
           "detector_source", "forget_read", "read_detector"]

CONVERTED_FORMAT = "gn_detect.detector/1"


class DetectorWeightsError(WeightsError):
    """A ``model.weights`` file that cannot be used (one line: the file, the cause, the fix)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        ConfigError.__init__(self, "model.weights", problem, fix)


class NotADetectorError(DetectorWeightsError):
    """The file holds weights, but no whole detector this reader knows."""


# Settings that say where weights come from: never a file's conventions.
_NOT_FROM_A_FILE = ("name", "weights", "weights_classes", "backbone.weights", "backbone.weights_strict")

# A gn-detect checkpoint's model settings that do not make its weights (where the run's weights came
# from, how it trained or post-processes): not conventions.
_NOT_CONVENTIONS = _NOT_FROM_A_FILE + (
    "backbone.freeze_at", "backbone.zero_init_residual", "head.prior_prob", "loss.", "test.", "norm_opts.impl",
    "norm_opts.bn_group_size", *(f"{part}.norm_opts.{k}" for part in ("backbone", "fpn", "head")
                                 for k in ("impl", "bn_group_size")))


def _conventions_of(settings: dict[str, Any], drop: tuple[str, ...] = _NOT_CONVENTIONS) -> dict[str, Any]:
    """The settings (flat ``model.``-relative keys) that make a file's weights: schema keys only,
    ``drop`` dropped (a key, or a prefix ending in "."); an unknown key is refused."""
    from gn_detect.config.schema import ModelConfig  # noqa: PLC0415 - the schema is the key list

    known = set(flatten(OmegaConf.to_container(OmegaConf.structured(ModelConfig))))
    unknown = sorted(k for k in settings if k not in known)
    if unknown:
        raise WeightsError(f"records settings that are no model keys: {unknown[:5]}",
                           "give a file gn-detect or tools/convert_weights.py wrote")
    return {k: v for k, v in settings.items() if not any(k == n or (n.endswith(".") and k.startswith(n)) for n in drop)}


def map_gn_detect(ckpt: dict[str, Any]) -> MappedDetector:
    """A gn-detect checkpoint: its weights as they are, its model config as the conventions,
    its categories as the class rows."""
    description = ckpt["description"]
    config = fill_unrecorded({"model": dict(description["config"]["model"])})["model"]
    conventions = _conventions_of(flatten(config))
    names = [c["name"] for c in description["model"]["categories"]]
    state = {k.removeprefix("module."): v for k, v in ckpt["model"].items()}
    return MappedDetector("gn-detect", state, conventions, names, mapped=[(k, k) for k in state])


def converted_record(md: MappedDetector) -> dict[str, Any]:
    """What tools/convert_weights.py writes for a detector (read back by ``map_converted``)."""
    return {"format": CONVERTED_FORMAT, "source": md.source, "state_dict": {k: v.contiguous() for k, v in
            md.state_dict.items()}, "conventions": dict(md.conventions), "class_names": list(md.class_names)}


def map_converted(obj: dict[str, Any]) -> MappedDetector:
    """A file tools/convert_weights.py wrote: already in gn-detect's names."""
    state = obj["state_dict"]
    # a source's settings as its map stated them (test.clip, per-level thresholds included), never
    # where weights come from
    return MappedDetector(str(obj["source"]), dict(state), _conventions_of(dict(obj["conventions"]), _NOT_FROM_A_FILE),
                          list(obj["class_names"]), mapped=[(k, k) for k in state])


# source -> its name map (taking the dict detector_source returns)
DETECTOR_MAPS: dict[str, Callable[[dict[str, Any]], MappedDetector]] = {
    "torchvision": map_torchvision, "detectron2": map_detectron2, "detectron": map_detectron,
    "gn-detect": map_gn_detect, "converted": map_converted,
}


def detector_source(obj: Any) -> tuple[str, dict[str, Any]] | None:
    """(source, the dict its map takes) of a loaded file; None when it is no detector this reader knows."""
    if not isinstance(obj, dict):
        return None
    if obj.get("format") == CONVERTED_FORMAT:
        return "converted", obj
    if "description" in obj and isinstance(obj.get("model"), dict):
        return "gn-detect", obj
    blobs = obj.get("blobs", obj)
    if isinstance(blobs, dict) and "retnet_cls_pred_fpn3_w" in blobs:
        return "detectron", blobs
    inner = obj.get("model", obj)
    if isinstance(inner, dict) and "head.cls_score.weight" in inner and any(
            str(k).startswith("backbone.bottom_up.") for k in inner):
        return "detectron2", inner
    if is_torchvision_retinanet(obj):
        return "torchvision", obj
    return None


@functools.lru_cache(maxsize=1)
def _read_cached(path: Path, _stamp: tuple[int, int]) -> MappedDetector:
    try:
        _, obj = _read_raw(path)
    except WeightsError as e:  # the reader's own line, under this key
        raise DetectorWeightsError(str(e).removeprefix(f"{e.key}: ")) from None
    found = detector_source(obj)
    if found is None:
        raise NotADetectorError(
            f"{path}: holds no whole RetinaNet this reader knows (no torchvision cls_logits, detectron2 "
            "head.cls_score, Detectron retnet_cls_pred_fpn3_w or gn-detect checkpoint)",
            "give a detector file, or a backbone file as model.backbone.weights")
    source, inner = found
    try:
        md = DETECTOR_MAPS[source](inner)
    except WeightsError as e:
        raise DetectorWeightsError(f"{path}: " + str(e).removeprefix(f"{e.key}: ")) from None
    except (KeyError, TypeError, ValueError, AttributeError, IndexError) as e:  # a damaged or hand-made file
        raise DetectorWeightsError(f"{path}: looks like a {source} file but its content is not ({type(e).__name__}: "
                                   f"{str(e)[:200]})", "give the file as its source wrote it") from None
    rows = len(md.class_names)
    logits = md.state_dict.get("head.cls_score.weight")
    if rows == 0 or logits is None or logits.shape[0] % rows:
        raise DetectorWeightsError(f"{path}: its class logits ({None if logits is None else tuple(logits.shape)}) "
                                   f"do not hold {rows} class row(s) per anchor", "give the file as its source wrote it")
    return md


def forget_read() -> None:
    """Drops the file :func:`read_detector` keeps (once the model holds its weights)."""
    _read_cached.cache_clear()


def read_detector(path: str | Path) -> MappedDetector:
    """The detector in ``path`` in gn-detect's names (the last file read is kept: a run reads it
    twice, conventions and load)."""
    path = Path(path)
    if not path.is_file():
        raise DetectorWeightsError(f"{path} does not exist", "give the path of a whole-detector file (torchvision "
                                   "retinanet_resnet50_fpn[_v2] .pth, gn-detect checkpoint) or null")
    st = path.stat()
    return _read_cached(path.resolve(), (st.st_mtime_ns, st.st_size))
