"""build_dataset: data config -> CocoDetection (keys documented in docs/data.md)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .coco import CocoDetection
from .synthetic import SHAPES_LAYOUT, ensure_shapes_dataset
from .transforms import DetectionTransform

# defaults for every key build_dataset reads; a config only needs to say what differs
DEFAULTS: dict[str, Any] = {
    "name": "coco",
    "root": None,
    "min_size_train": [800],
    "max_size_train": None,  # None: same as max_size
    "min_size_test": 800,
    "max_size": 1333,
    "flip_prob": 0.5,
    "filter_empty": True,
    "verify_images": True,
    "synthetic": {"num_train": 300, "num_val": 100, "image_size": 256, "seed": 0, "num_classes": 5,
                  "image_format": "jpg", "max_objects": 6},
}
# split layout of COCO-2017-style roots when the config gives no images/ann for a split
COCO_LAYOUT: dict[str, dict[str, str]] = {
    "train": {"images": "train2017", "ann": "annotations/instances_train2017.json"},
    "val": {"images": "val2017", "ann": "annotations/instances_val2017.json"},
}


def _to_dict(cfg: Any) -> dict[str, Any]:
    # accept plain dicts and OmegaConf DictConfigs without importing omegaconf eagerly
    if cfg is None:
        return {}
    try:
        from omegaconf import DictConfig, OmegaConf

        if isinstance(cfg, DictConfig):
            return OmegaConf.to_container(cfg, resolve=True)  # type: ignore[return-value]
    except ImportError:
        pass
    if isinstance(cfg, Mapping):
        return {k: (_to_dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    raise TypeError(f"data config must be a mapping, got {type(cfg).__name__}")


def resolve_path(path: str | Path, base_dir: str | Path | None) -> Path:
    """`~` expanded; relative paths resolved against base_dir (the launch dir), else cwd."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir if base_dir is not None else Path.cwd()) / p
    return p


def build_transform(cfg: Mapping[str, Any] | Any, train: bool) -> DetectionTransform:
    c = {**DEFAULTS, **_to_dict(cfg)}
    if train:
        sizes = c["min_size_train"]
        sizes = [int(sizes)] if isinstance(sizes, (int, float)) else [int(s) for s in sizes]
        max_size = c["max_size_train"] if c["max_size_train"] is not None else c["max_size"]
        return DetectionTransform(sizes, int(max_size), flip_prob=float(c["flip_prob"]))
    return DetectionTransform(int(c["min_size_test"]), int(c["max_size"]), flip_prob=0.0)


def build_dataset(
    cfg: Mapping[str, Any] | Any,
    split: str,
    *,
    base_dir: str | Path | None = None,
    train: bool | None = None,
) -> CocoDetection:
    """Build the dataset for `split` ("train", "val" or any split key in cfg).

    train (default: split == "train") selects the random train transform and filter_empty;
    evaluation datasets always keep images without annotations.
    """
    c = {**DEFAULTS, **_to_dict(cfg)}
    c["synthetic"] = {**DEFAULTS["synthetic"], **(c.get("synthetic") or {})}
    name = str(c["name"])
    if c["root"] is None:
        raise ValueError("data config needs 'root' (the dataset folder)")
    root = resolve_path(c["root"], base_dir)
    train = split == "train" if train is None else train

    if name == "shapes":
        ensure_shapes_dataset(root, **c["synthetic"])
        layout = SHAPES_LAYOUT
    elif name == "coco":
        layout = COCO_LAYOUT
    else:
        raise ValueError(f"unknown dataset name {name!r}; expected 'shapes' or 'coco'")

    split_cfg = {**layout.get(split, {}), **(c.get(split) or {})}
    if "images" not in split_cfg or "ann" not in split_cfg:
        raise KeyError(f"data config has no '{split}: {{images, ann}}' entry and {name!r} has no default "
                       f"for that split (known: {sorted(layout)})")
    return CocoDetection(
        resolve_path(split_cfg["images"], root),
        resolve_path(split_cfg["ann"], root),
        transform=build_transform(c, train),
        filter_empty=bool(c["filter_empty"]) and train,
        verify_images=bool(c["verify_images"]),
        name=f"{name}_{split}",
    )
