"""build_dataset: a data config, checked against the schema's ``DataConfig``, -> CocoDetection.

Every key, its type and its default live in :class:`gn_detect.config.schema.DataConfig`
(documented in docs/data.md); this module only reads them. ``data.name=shapes`` generates its
data first, only where ``check_shapes_root`` allows.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import MissingMandatoryValue, OmegaConfBaseException

from gn_detect.config.schema import CHOICES, DataConfig
from gn_detect.io import paused_gc

from .checks import categories_of, load_coco_json, select_categories
from .json_checks import ParsedFiles
from .coco import CocoDetection
from .synthetic import META_FILE, SHAPES_LAYOUT, ensure_shapes_dataset
from .transforms import DetectionTransform

SPLITS = ("train", "val")
DATASETS_DIR = "datasets"  # the project's datasets folder, relative to the launch folder
_SCHEMA_FIX = "use the keys and types of DataConfig in gn_detect/config/schema.py (see docs/data.md)"


def data_config(cfg: Mapping[str, Any] | DictConfig | None) -> DictConfig:
    """``cfg`` as a DictConfig typed by ``DataConfig``.

    A config already typed by the schema (what Hydra composes) is returned as it is; a plain
    dict or an untyped DictConfig (tests, a run's saved config.yaml) is merged onto the
    schema's defaults, so an unknown key or a value of the wrong type fails here, named.
    """
    if isinstance(cfg, DictConfig) and OmegaConf.get_type(cfg) is DataConfig:
        return cfg
    if cfg is not None and not isinstance(cfg, (Mapping, DictConfig)):
        raise TypeError(f"data config must be a mapping, got {type(cfg).__name__}")
    try:
        return OmegaConf.merge(OmegaConf.structured(DataConfig), cfg if cfg is not None else {})
    except OmegaConfBaseException as e:
        first = str(e.msg).splitlines()[0] if e.msg else type(e).__name__
        where = f"data.{e.full_key}: " if e.full_key else ""
        raise ValueError(f"data config: {where}{first}. Fix: {_SCHEMA_FIX}") from None


def _read(c: DictConfig, key: str) -> Any:
    """``c.<key>`` (dotted), with a one-line error for a required key left unset or a failing
    interpolation (e.g. an unset environment variable)."""
    try:
        return OmegaConf.select(c, key, throw_on_missing=True)
    except MissingMandatoryValue:
        if key == "root":
            raise ValueError("data.root is required: the dataset folder. Fix: pass data.root=/path/to/coco "
                             "(or use a preset that sets it, e.g. data=coco128)") from None
        raise ValueError(f"data.{key} is required. Fix: set data.{key}=... in configs/data/<name>.yaml "
                         "or on the command line") from None
    except OmegaConfBaseException as e:
        raise ValueError(f"data.{key}: {str(e.msg).splitlines()[0]}") from None


def resolve_path(path: str | Path, base_dir: str | Path | None) -> Path:
    """`~` expanded; relative paths resolved against base_dir (the launch dir), else cwd."""
    p = Path(path).expanduser()
    if not p.is_absolute():
        p = Path(base_dir if base_dir is not None else Path.cwd()) / p
    return p


def build_transform(cfg: Mapping[str, Any] | DictConfig, train: bool) -> DetectionTransform:
    """The train (random scale and flip) or test transform of a data config."""
    c = data_config(cfg)
    if train:
        max_size = c.max_size if c.max_size_train is None else c.max_size_train
        return DetectionTransform(list(c.min_size_train), max_size, flip_prob=c.flip_prob,
                                  uint8_resize=c.decode == "tensor")
    return DetectionTransform(c.min_size_test, c.max_size, flip_prob=0.0, uint8_resize=c.decode == "tensor")


def split_paths(c: DictConfig, split: str) -> tuple[str, str]:
    """(images folder, instances json) of ``split``, relative to the root (or absolute).

    ``coco`` reads ``data.<split>.images/ann``. ``shapes`` has the fixed layout its generator
    writes; a config that moves it elsewhere is refused rather than ignored.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: the data config has the splits {SPLITS}. "
                         "Fix: evaluate on one of them (eval.split=val or eval.split=train)")
    images, ann = _read(c, f"{split}.images"), _read(c, f"{split}.ann")
    if c.name != "shapes":
        return images, ann
    fixed = SHAPES_LAYOUT[split]
    schema_default = getattr(DataConfig(), split)
    if (images, ann) not in ((fixed["images"], fixed["ann"]), (schema_default.images, schema_default.ann)):
        raise ValueError(f"data.{split} = {{images: {images}, ann: {ann}}} cannot move the generated shapes "
                         f"dataset (its layout is fixed: {fixed}). Fix: remove data.{split}; data.root "
                         "places the dataset")
    return fixed["images"], fixed["ann"]


def check_shapes_root(raw: str, root: Path, base_dir: str | Path | None) -> None:
    """Where generated shapes data may go (docs/data.md): anywhere under the launch folder's
    ``datasets/`` (folders made as needed), a new folder whose parent exists, an existing empty
    folder, or an existing shapes dataset (it has shapes_meta.json). Anything else raises a
    one-line ValueError naming ``data.root`` (as configured: ``raw``) and the fix, before
    anything is written; so a mistyped ``data.root=/nonexistent/shapes`` makes no folders."""
    if root.exists():
        if not root.is_dir():
            raise ValueError(f"data.root={raw}: {root} is a file, not a folder. Fix: give a new or empty folder, "
                             "or leave data.root at datasets/shapes")
        if not (root / META_FILE).is_file() and any(root.iterdir()):
            raise ValueError(f"data.root={raw}: {root} is not empty and holds no shapes dataset (no {META_FILE}); "
                             "generating there would mix files. Fix: give a new or empty folder, or leave data.root "
                             "at datasets/shapes")
        return
    datasets = resolve_path(DATASETS_DIR, base_dir).resolve()
    target = root.resolve()
    if target != datasets and datasets not in target.parents and not root.parent.is_dir():
        raise ValueError(f"data.root={raw}: the parent folder {root.parent} does not exist; shapes data is only "
                         f"generated in a new folder whose parent exists, or under {datasets}. Fix: create "
                         f"{root.parent} first, or leave data.root at datasets/shapes")


def _ensure_shapes(c: DictConfig, root: Path, base_dir: str | Path | None) -> None:
    """Generate (or reuse) the shapes dataset of ``c`` at ``root`` after ``check_shapes_root``."""
    check_shapes_root(str(_read(c, "root")), root, base_dir)
    ensure_shapes_dataset(root, **OmegaConf.to_container(c.synthetic))


def split_categories(cfg: Mapping[str, Any] | DictConfig, split: str, *,
                     base_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """The categories of ``split`` (sorted by id, checked as ``build_dataset`` checks them) from
    its json alone: no image is opened, so a category mismatch between splits can be caught
    before the datasets are built. (``shapes`` is generated first if it is not on disk yet.)"""
    c = data_config(cfg)
    root = resolve_path(_read(c, "root"), base_dir)
    _, ann = split_paths(c, split)
    if c.name == "shapes":
        _ensure_shapes(c, root, base_dir)
    ann_file = resolve_path(ann, root)
    data, _ = select_categories({"categories": load_coco_json(ann_file)["categories"]}, c.get("classes"),
                                str(ann_file))
    return categories_of(data)


def build_dataset(
    cfg: Mapping[str, Any] | DictConfig,
    split: str,
    *,
    base_dir: str | Path | None = None,
    train: bool | None = None,
    parsed: ParsedFiles | None = None,
) -> CocoDetection:
    """Build the dataset for `split` ("train" or "val").

    ``cfg`` is the data config: typed by ``DataConfig``, or a plain dict of what differs from
    its defaults. train (default: split == "train") selects the random train transform and
    filter_empty; evaluation datasets always keep images without annotations. ``parsed``: the
    annotation files the pre-flight already parsed (taken instead of parsing again).
    """
    c = data_config(cfg)
    if c.name not in CHOICES["data.name"]:
        raise ValueError(f"unknown dataset name data.name={c.name!r}. Fix: use one of {CHOICES['data.name']} "
                         "(convert other formats with tools/convert_dataset.py, then name: coco)")
    root = resolve_path(_read(c, "root"), base_dir)
    train = split == "train" if train is None else train
    images, ann = split_paths(c, split)
    if c.name == "shapes":
        _ensure_shapes(c, root, base_dir)
    with paused_gc():  # the dataset's records: hundreds of thousands of new objects (gn_detect/io.py)
        return CocoDetection(
            resolve_path(images, root),
            resolve_path(ann, root),
            transform=build_transform(c, train),
            filter_empty=c.filter_empty and train,
            verify_images=c.verify_images,
            name=f"{c.name}_{split}",
            parsed=parsed,
            decode=c.decode,
            classes=c.get("classes"),
        )
