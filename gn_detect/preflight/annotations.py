"""The data part of the pre-flight: every annotation file a run will read, put through the
dataset's own checks on the json alone (gn_detect/data/json_checks.py:``read_json_checks``: parsed
and checked, or taken from the record of an earlier start of the same content) without opening
an image, listing a folder or generating data. Each problem is one line naming the file (or key)
and the fix, so a truncated json, an empty annotation list, a category mismatch between splits or
a batch larger than the split stops the command before the images are verified.

Each file is read once per pre-flight (:class:`Parsed` keeps the summaries, so the runs of a
sweep share them); for a single run what was read goes, in ``Parsed.files``, to the run's dataset
builds, which then do not read it again.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from gn_detect.data.build import _read, check_shapes_root, data_config, resolve_path, split_paths
from gn_detect.data.checks import CheckedCoco, DataError, FileKey, check_same_categories, file_key, select_categories
from gn_detect.data.json_checks import ParsedFiles, classes_key, read_json_checks
from gn_detect.data.synthetic import META_FILE, shapes_categories

__all__ = ["Parsed", "SplitSummary", "annotation_problems", "read_split"]


class SplitSummary:
    """What a split's json promises before any image is opened (the dataset's checks on the json
    alone): its categories, the image entries a dataset can use, and how many of them hold a
    usable non-crowd box (and how many boxes)."""

    def __init__(self, ann_file: Path, checked: CheckedCoco, listed_annotations: int) -> None:
        self.ann_file = ann_file
        self.categories = checked.categories
        self.images = len(checked.images)
        self.images_with_boxes = int((checked.box_counts > 0).sum())
        self.boxes = len(checked.boxes)
        self.listed_annotations = listed_annotations


@dataclass
class Parsed:
    """What one pre-flight parsed: a summary per file (shared by the runs of a sweep) and, for a
    single run (``files`` not None), the parsed files for that run's dataset builds."""

    summaries: dict[tuple[FileKey, tuple[str, ...] | None], SplitSummary] = field(default_factory=dict)
    files: ParsedFiles | None = None


def read_split(cfg: DictConfig | Mapping[str, Any], split: str, base_dir: str | Path | None,
               parsed: Parsed | None = None) -> SplitSummary | None:
    """The split's :class:`SplitSummary` (from ``parsed.summaries`` when this pre-flight read the
    file already); None for generated ``shapes`` data not on disk yet (after checking where it may be
    generated, and ``data.classes`` against the categories it will have). Raises DataError/ValueError
    with one line."""
    parsed = parsed if parsed is not None else Parsed()
    c = data_config(cfg)
    root = resolve_path(_read(c, "root"), base_dir)
    _, ann = split_paths(c, split)
    ann_file = resolve_path(ann, root)
    classes = classes_key(c.classes)
    if c.name == "shapes":
        check_shapes_root(str(_read(c, "root")), root, base_dir)
        if not (root / META_FILE).is_file():  # generated at the start: data.classes against what it will list
            select_categories({"categories": shapes_categories(c.synthetic.num_classes), "annotations": []},
                              classes, str(ann_file))
            return None
    key = file_key(ann_file)  # None: read_json_checks says what is wrong
    if key is None or (key, classes) not in parsed.summaries:
        read = read_json_checks(ann_file, classes)  # the dataset's checks on the json alone
        summary = SplitSummary(ann_file, read.checked, read.listed)  # kept for a sweep's runs: not the whole checks
        if parsed.files is not None:  # a single run's dataset build takes the file and its checks
            parsed.files.put(read)
        if key is not None:
            parsed.summaries[(key, classes)] = summary
        return summary
    return parsed.summaries[(key, classes)]


def annotation_problems(cfg: DictConfig | Mapping[str, Any], *, train_split: str | None, eval_split: str | None,
                        base_dir: str | Path | None, ims_per_batch: int | None = None,
                        train_categories: list[dict[str, Any]] | None = None,
                        parsed: Parsed | None = None) -> tuple[list[str], SplitSummary | None]:
    """The problems of the splits a command reads (``train_split`` for training, ``eval_split`` for
    evaluation; either None), one line each, and the training split's summary (None when it is not
    read or unusable). ``train_categories`` (a checkpoint's) replaces the training split's in the
    category check of evaluation. ``parsed``: what this pre-flight parsed so far (:class:`Parsed`)."""
    problems: list[str] = []
    summaries: dict[str, SplitSummary | None] = {}
    filter_empty = bool(data_config(cfg).filter_empty)
    for role, split in (("train", train_split), ("eval", eval_split)):
        if split is None or split in summaries:
            continue
        try:
            summaries[split] = read_split(cfg, split, base_dir, parsed)
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
