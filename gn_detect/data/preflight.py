"""The data part of the command-line pre-flight (gn_detect/engine/preflight.py): every annotation
file a run will read, parsed fully and checked as the dataset will check it, without opening an
image, listing a folder or generating data. Each problem is one line naming the file (or key)
and the fix, so a truncated json, an empty annotation list, a category mismatch between splits
or a batch larger than the split stops the command before the images are verified.

Each file is parsed once here (the runs of a sweep share the summary); for a single run it is
handed over to the dataset build of the same process (``checks.hand_over``), which then does
not parse it again.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from .build import _read, check_shapes_root, data_config, resolve_path, split_paths
from .checks import DataError, SkipLog, _is_int, _usable_entries, categories_of, check_box, check_same_categories, \
    crowd_of, FileKey, file_key, hand_over, load_coco_json
from .synthetic import META_FILE

__all__ = ["SplitSummary", "annotation_problems", "read_split"]

# file_key -> summary: a sweep's runs share their annotation files, parsed once
_SUMMARIES: dict[FileKey, "SplitSummary"] = {}


class SplitSummary:
    """What a split's json promises before any image is opened: its categories, the image entries
    a dataset can use, and how many of them hold a usable non-crowd box (and how many boxes)."""

    def __init__(self, ann_file: Path, data: Mapping[str, Any]) -> None:
        self.ann_file = ann_file
        self.categories = categories_of({"categories": data["categories"]})
        entries, _ = _usable_entries(data["images"], SkipLog())
        self.images = len(entries)
        sizes = {e["id"]: (e.get("width"), e.get("height")) for e in entries}
        known = {c["id"] for c in self.categories}
        per_image: Counter[int] = Counter()
        for a in data["annotations"]:
            if not isinstance(a, Mapping) or a.get("image_id") not in sizes or a.get("category_id") not in known \
                    or crowd_of(a) != 0:
                continue
            w, h = sizes[a["image_id"]]
            if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
                w = h = float("inf")  # read from the file later; only the box itself is checked here
            if check_box(a.get("bbox"), w, h)[1] is not None:
                per_image[a["image_id"]] += 1
        self.images_with_boxes = len(per_image)
        self.boxes = sum(per_image.values())
        self.listed_annotations = len(data["annotations"])


def read_split(cfg: DictConfig | Mapping[str, Any], split: str, base_dir: str | Path | None, *,
               keep: bool = False) -> SplitSummary | None:
    """The split's :class:`SplitSummary`; None for generated ``shapes`` data not on disk yet
    (after checking where it may be generated). ``keep``: hand the parsed file over to the
    dataset build of this process (``checks.hand_over``). Raises DataError/ValueError with one line."""
    c = data_config(cfg)
    root = resolve_path(_read(c, "root"), base_dir)
    _, ann = split_paths(c, split)
    if c.name == "shapes":
        check_shapes_root(str(_read(c, "root")), root, base_dir)
        if not (root / META_FILE).is_file():
            return None
    ann_file = resolve_path(ann, root)
    key = file_key(ann_file)  # None: load_coco_json says what is wrong
    if key not in _SUMMARIES:
        data = load_coco_json(ann_file)
        summary = SplitSummary(ann_file, data)
        if keep:
            hand_over(key, data)
        if key is not None:
            _SUMMARIES[key] = summary
        return summary
    return _SUMMARIES[key]


def annotation_problems(cfg: DictConfig | Mapping[str, Any], *, train_split: str | None, eval_split: str | None,
                        base_dir: str | Path | None, ims_per_batch: int | None = None,
                        train_categories: list[dict[str, Any]] | None = None,
                        keep: bool = False) -> tuple[list[str], SplitSummary | None]:
    """The problems of the splits a command reads (``train_split`` for training, ``eval_split`` for
    evaluation; either None), one line each, and the training split's summary (None when it is not
    read or unusable). ``train_categories`` (a checkpoint's) replaces the training split's in the
    category check of evaluation. ``keep``: a single run that builds these datasets in this
    process next (``read_split``)."""
    problems: list[str] = []
    summaries: dict[str, SplitSummary | None] = {}
    filter_empty = bool(data_config(cfg).filter_empty)
    for role, split in (("train", train_split), ("eval", eval_split)):
        if split is None or split in summaries:
            continue
        try:
            summaries[split] = read_split(cfg, split, base_dir, keep=keep)
        except (DataError, ValueError) as e:
            problems.append(f"data error: {e}")
            summaries[split] = None
    train = summaries.get(train_split) if train_split is not None else None
    if train is not None:
        if train.boxes == 0:
            problems.append(f"data error: {train.ann_file}: no usable box in the training split ({train.images} usable "
                            f"images, {train.listed_annotations} annotations listed): nothing to train on. Fix: point "
                            f"data.{train_split}.ann at an instances json with annotations")
        usable = train.images_with_boxes if filter_empty else train.images
        if ims_per_batch is not None and 0 < usable < ims_per_batch:
            problems.append(f"data error: a training batch of {ims_per_batch} images is larger than the training split "
                            f"({usable} usable images in {train.ann_file}): every step would repeat images and a CPU run "
                            f"can be killed for memory. Fix: data.ims_per_device={max(1, usable)} or less")
    val = summaries.get(eval_split) if eval_split is not None else None
    if val is not None:
        if val.images == 0 or val.boxes == 0:
            problems.append(f"data error: {val.ann_file}: the evaluation split has {val.images} usable images and "
                            f"{val.boxes} usable boxes: AP is undefined. Fix: evaluate on a split with annotations "
                            "(eval.split, data.val.ann)")
        reference = train_categories if train_categories is not None else (train.categories if train else None)
        if reference is not None and (eval_split != train_split or train_categories is not None):
            try:
                check_same_categories(reference, val.categories)
            except ValueError as e:
                problems.append(f"data error: {val.ann_file}: {e}")
    return problems, train
