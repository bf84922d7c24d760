"""Pretrained backbone files of every source, read as data and mapped to torchvision's ResNet layout.

The source is told from the content, never from the file name (docs/weights.md has the exact
name mapping):

* ``torchvision``: a ``.pth`` state dict (optionally wrapped in ``"model"``/``"state_dict"`` and
  prefixed ``module.``, ``backbone.body.`` or ``backbone.``), torchvision names;
* ``timm``: a ``.safetensors`` file with torchvision names (``resnet*_gn``: GN weight/bias);
* ``detectron``: a Caffe2 ``.pkl`` dict of numpy arrays (optionally in ``"blobs"``), names
  ``conv1_w``, ``res_conv1_bn_s``, ``res{2..5}_{i}_branch2{a,b,c}_w``, ``..._bn_s/_b`` or
  ``_gn_s/_b``, ``res{2..5}_0_branch1_*``;
* ``detectron2``: ``{"model": {...}}`` (``.pkl`` or ``.pth``) with names ``stem.conv1.*``,
  ``res{2..5}.{i}.conv{1,2,3}[.norm].*``, ``res{2..5}.0.shortcut[.norm].*``, with or without
  ``backbone.bottom_up.``; ``"__author__"`` says where it came from;
* ``converted``: ``{"state_dict", "conventions"}`` written by tools/convert_weights.py.

Pickles go through :mod:`gn_detect.checkpoint.safe_pickle`, torch files through
``torch.load(weights_only=True)``, safetensors through the ``safetensors`` package: nothing a
file names is run. What the norms of a file hold (``holds``) uses the norm table's ``weights``
vocabulary: ``"scale_shift"`` (fused BN, no statistics), ``"batch_stats"`` (BN with running
statistics), ``"group"`` (GN weight/bias); None where the content cannot tell (weight/bias
without statistics in torchvision or detectron2 names: an affine or a GN).
"""
from __future__ import annotations

import functools
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gn_detect.config.errors import ConfigError
from gn_detect.norms import norm_spec

from .safe_pickle import load_pickle

__all__ = ["SOURCES", "WeightsError", "SourceWeights", "read_weights", "architecture"]

SOURCES = ("torchvision", "timm", "detectron", "detectron2")  # what --source may name
_TORCH_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C  # first pickle of a pre-zip torch.save file
_TV_PREFIXES = ("module.", "backbone.body.", "backbone.")
_D2_PREFIX = "backbone.bottom_up."
_BRANCH = {"1": ("downsample.0", "downsample.1"), "2a": ("conv1", "bn1"), "2b": ("conv2", "bn2"),
           "2c": ("conv3", "bn3")}
_C2_PARAM = {"s": "weight", "b": "bias"}
_C2_IGNORED = re.compile(r"^(fc1000|pred)_|_momentum$")
_C2_STEM_NORM = re.compile(r"^(?:res_conv1|conv1)_([bg])n_([sb])$")
_C2_BLOCK = re.compile(r"^res(\d)_(\d+)_branch(1|2a|2b|2c)(?:_w|_([bg])n_([sb]))$")
_D2_STEM = re.compile(r"^stem\.conv1\.(?:(weight)|norm\.(\w+))$")
_D2_BLOCK = re.compile(r"^res(\d)\.(\d+)\.(conv[123]|shortcut)\.(?:(weight)|norm\.(\w+))$")
_C2_HOLDS = {"b": "scale_shift", "g": "group"}  # Caffe2 _bn_s/_bn_b: BN fused into scale/shift; _gn_: GN


class WeightsError(ConfigError):
    """A backbone weights file that cannot be used (one line: the file, the cause, the fix)."""

    def __init__(self, problem: str, fix: str = "") -> None:
        super().__init__("model.backbone.weights", problem, fix)


@dataclass
class SourceWeights:
    """A backbone file mapped to torchvision's ResNet layout."""

    path: Path
    source: str                          # torchvision, timm, detectron, detectron2, converted
    state_dict: dict[str, torch.Tensor]  # torchvision keys
    holds: str | None                    # norm-table ``weights`` kind of its norms (module docstring)
    author: str | None = None            # detectron2's "__author__"
    conventions: dict[str, Any] | None = None  # a converted file's recorded conventions
    mapped: list[tuple[str, str]] = field(default_factory=list)  # (file name, torchvision name)
    ignored: list[str] = field(default_factory=list)

    def describe(self) -> str:
        holds = {"scale_shift": "fused BN scale/shift (no statistics)", "batch_stats": "BN with statistics",
                 "group": "GN weight/bias", None: "norm weight/bias without statistics"}[self.holds]
        author = f", __author__ {self.author!r}" if self.author else ""
        return f"{self.source} file{author} holding {holds}"


def _is_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 9:
        return False
    (n,) = struct.unpack("<Q", head[:8])
    return 0 < n <= size - 8 and head[8:9] == b"{"


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - one line naming the file
        text = re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip()  # torch's message bolds a warning in ANSI codes
        called = re.search(r"Unsupported global: GLOBAL (\S+)", text)  # a callable the file asks to run
        first = (f"refused: it asks to call {called.group(1)}" if called
                 else text.splitlines()[0] if text else type(e).__name__)
        raise WeightsError(f"{path}: cannot be read as data with torch.load(weights_only=True) ({first})",
                           "give a file that holds only weights") from None


def _read_raw(path: Path) -> tuple[str, Any]:
    """(container, object): container is zip/legacy (torch), safetensors or pickle."""
    with open(path, "rb") as f:
        head = f.read(16)
    if head[:4] == b"PK\x03\x04":
        return "torch", _torch_load(path)
    if _is_safetensors(head, path.stat().st_size):
        from safetensors.torch import load_file  # noqa: PLC0415 - only for .safetensors content

        try:
            return "safetensors", load_file(str(path))
        except Exception as e:  # noqa: BLE001
            raise WeightsError(f"{path}: a broken safetensors file ({e})") from None
    try:
        obj = load_pickle(path)
    except ValueError as e:
        raise WeightsError(str(e).split("; fix: ")[0], "give a file that holds only weights") from None
    if isinstance(obj, int) and obj == _TORCH_LEGACY_MAGIC:
        return "torch", _torch_load(path)
    return "pickle", obj


def _tensor(value: Any) -> torch.Tensor | None:
    if isinstance(value, torch.Tensor):
        return value
    if isinstance(value, np.ndarray) and value.dtype.kind in "fiu":
        return torch.from_numpy(np.ascontiguousarray(value))
    return None


def _from_caffe2(blobs: dict[str, Any], sw: SourceWeights) -> None:
    kinds = set()
    for key, value in blobs.items():
        name = None
        if key == "conv1_w":
            name = "conv1.weight"
        elif m := _C2_STEM_NORM.match(key):
            kinds.add(m.group(1))
            name = f"bn1.{_C2_PARAM[m.group(2)]}"
        elif m := _C2_BLOCK.match(key):
            stage, block, branch, norm, param = m.groups()
            conv, bn = _BRANCH[branch]
            prefix = f"layer{int(stage) - 1}.{block}"
            if norm is None:
                name = f"{prefix}.{conv}.weight"
            else:
                kinds.add(norm)
                name = f"{prefix}.{bn}.{_C2_PARAM[param]}"
        tensor = _tensor(value)
        if name is None or tensor is None:
            sw.ignored.append(key)
            continue
        sw.state_dict[name] = tensor
        sw.mapped.append((key, name))
    if len(kinds) > 1:
        raise WeightsError(f"{sw.path}: a Caffe2 file holding both fused-BN and GN blobs",
                           "give a file of one network")
    sw.holds = _C2_HOLDS[kinds.pop()] if kinds else None


def _from_detectron2(model: dict[str, Any], sw: SourceWeights) -> None:
    for key, value in model.items():
        short = key[len(_D2_PREFIX):] if key.startswith(_D2_PREFIX) else key
        name = None
        if m := _D2_STEM.match(short):
            name = "conv1.weight" if m.group(1) else f"bn1.{m.group(2)}"
        elif m := _D2_BLOCK.match(short):
            stage, block, part, weight, param = m.groups()
            conv, bn = ("downsample.0", "downsample.1") if part == "shortcut" else (part, f"bn{part[-1]}")
            prefix = f"layer{int(stage) - 1}.{block}"
            name = f"{prefix}.{conv}.weight" if weight else f"{prefix}.{bn}.{param}"
        tensor = _tensor(value)
        if name is None or tensor is None or name.endswith("num_batches_tracked"):
            sw.ignored.append(key)
            continue
        sw.state_dict[name] = tensor
        sw.mapped.append((key, name))
    sw.holds = _stats_or_none(sw.state_dict)


def _from_torchvision(state: dict[str, Any], sw: SourceWeights) -> None:
    for key, value in state.items():
        name = key
        while name.startswith(_TV_PREFIXES):  # e.g. module.backbone.body.conv1.weight
            name = name[len(next(p for p in _TV_PREFIXES if name.startswith(p))):]
        tensor = _tensor(value)
        if tensor is None or name.startswith("fc.") or name.endswith("num_batches_tracked"):
            sw.ignored.append(key)
            continue
        sw.state_dict[name] = tensor
        sw.mapped.append((key, name))
    sw.holds = _stats_or_none(sw.state_dict)
    if sw.holds is None and sw.source == "timm":
        sw.holds = "group"  # timm's norm weight/bias without statistics: its resnet*_gn models


def _stats_or_none(state: dict[str, torch.Tensor]) -> str | None:
    if any(k.endswith("running_var") for k in state):
        return "batch_stats"
    return None


def _names(obj: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """(naming family, the dict holding the weights) of a loaded file."""
    if "description" in obj and "model" in obj:
        return "gn-detect", obj
    blobs = obj.get("blobs", obj)
    if isinstance(blobs, dict) and ("conv1_w" in blobs or any(_C2_BLOCK.match(str(k)) for k in blobs)):
        return "caffe2", blobs
    inner = obj.get("model", obj.get("state_dict", obj))
    if isinstance(inner, dict):
        keys = [str(k) for k in inner]
        if any(k.startswith(("stem.conv1.", _D2_PREFIX + "stem.conv1.")) for k in keys):
            return "detectron2", inner
        if any(k.endswith("conv1.weight") for k in keys):
            return "torchvision", inner
    return "unknown", obj


_FAMILY = {"torchvision": "torchvision", "timm": "torchvision", "detectron": "caffe2", "detectron2": "detectron2"}


@functools.lru_cache(maxsize=1)
def _read_cached(path: Path, _stamp: tuple[int, int], source: str) -> SourceWeights:
    container, obj = _read_raw(path)
    if not isinstance(obj, dict):
        raise WeightsError(f"{path}: holds a {type(obj).__name__}, not a dict of weights",
                           "give a torchvision, timm, Detectron or detectron2 backbone file")
    if "state_dict" in obj and "conventions" in obj and isinstance(obj["conventions"], dict):
        sw = SourceWeights(path, "converted", {}, None, conventions=dict(obj["conventions"]))
        _from_torchvision(obj["state_dict"], sw)
        if sw.conventions.get("norm"):
            sw.holds = norm_spec(sw.conventions["norm"]).weights
        return sw
    family, inner = _names(obj)
    if family == "gn-detect":
        raise WeightsError(f"{path}: is a gn-detect checkpoint (a whole detector), not backbone weights",
                           "start a run from it with init_weights=<file> or model.weights=<file>, or give an "
                           "ImageNet backbone file")
    if family == "unknown":
        raise WeightsError(f"{path}: holds no ResNet weights this reader knows (no conv1.weight, conv1_w or "
                           "stem.conv1.weight)", "give a torchvision, timm, Detectron (.pkl) or detectron2 file")
    if source != "auto" and _FAMILY[source] != family:
        raise WeightsError(f"{path}: --source {source} but the file holds {family} names",
                           "use --source auto or the source the names belong to")
    name = {"caffe2": "detectron", "detectron2": "detectron2"}.get(family)
    if name is None:
        name = source if source != "auto" else ("timm" if container == "safetensors" else "torchvision")
    author = obj.get("__author__") if family == "detectron2" else None
    sw = SourceWeights(path, name, {}, None, author=None if author is None else str(author))
    {"caffe2": _from_caffe2, "detectron2": _from_detectron2, "torchvision": _from_torchvision}[family](inner, sw)
    if not sw.state_dict:
        raise WeightsError(f"{path}: no ResNet weights found in the {name} file")
    return sw


def read_weights(path: str | Path, source: str = "auto") -> SourceWeights:
    """The backbone weights of ``path`` in torchvision's layout (``source``: auto or one of
    :data:`SOURCES`; the last file read is kept, since a run reads it twice: conventions and load)."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"{path} does not exist", "give the path of a backbone weights file (torchvision/timm "
                           ".pth or .safetensors, Detectron .pkl, detectron2 .pkl/.pth) or null")
    if source != "auto" and source not in SOURCES:
        raise WeightsError(f"source {source!r} is not one of auto, {', '.join(SOURCES)}")
    st = path.stat()
    return _read_cached(path.resolve(), (st.st_mtime_ns, st.st_size), source)


def architecture(state: dict[str, torch.Tensor]) -> dict[str, int | str | None]:
    """depth, groups and width_per_group of a torchvision-layout ResNet state dict (standard widths)."""
    blocks = [len({k.split(".")[1] for k in state if k.startswith(f"layer{s}.")}) for s in range(1, 5)]
    bottleneck = any(".conv3." in k for k in state)
    depth = {(True, (3, 4, 6, 3)): "50", (True, (3, 4, 23, 3)): "101", (True, (3, 8, 36, 3)): "152",
             (False, (2, 2, 2, 2)): "18", (False, (3, 4, 6, 3)): "34"}.get((bottleneck, tuple(blocks)))
    groups, width = 1, 64
    w = state.get("layer1.0.conv2.weight")
    if bottleneck and w is not None:
        groups = int(w.shape[0] // w.shape[1])
        width = int(w.shape[0] // groups)
    return {"depth": depth, "groups": groups, "width_per_group": width}
