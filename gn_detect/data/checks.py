"""Annotation and image checks run once, when a dataset is built.

Policy: every problem in the data either raises a clear error at load time (malformed json,
no categories, nothing left to train on) or becomes a counted, logged skip. Nothing is left
to fail in the middle of an epoch, hours into a run.
"""

from __future__ import annotations

import json
import logging
import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

logger = logging.getLogger(__name__)

# reason -> what happened to the item. The key set is fixed so data_skipped.json always has
# the same schema (zeros included) and runs can be compared.
SKIP_REASONS: dict[str, str] = {
    "invalid_image_entry": "image entry without an int id / file_name, or a duplicate id: image dropped",
    "missing_image": "image file not found: image dropped",
    "unreadable_image": "image file cannot be decoded (corrupt, truncated, not an image): image dropped",
    "size_mismatch": "json width/height differ from the image file: image dropped (its boxes would be wrong)",
    "converted_mode": "image is not 8-bit RGB (grayscale, CMYK, RGBA, palette, 16-bit): converted to RGB when read",
    "unknown_image": "annotation names an image id that is not in 'images': annotation skipped",
    "unknown_category": "annotation names a category id that is not in 'categories': annotation skipped",
    "degenerate_box": "bbox missing, not 4 finite numbers, or width/height <= 0: annotation skipped",
    "outside_box": "bbox entirely outside the image: annotation skipped",
    "clipped_box": "bbox partly outside the image: clipped to the image, kept",
    "crowd": "iscrowd=1: excluded from training targets, kept in .coco so evaluation ignores it like COCO does",
    "empty_image": "image without any usable non-crowd annotation (counted; kept unless filter_empty)",
    "filtered_empty": "image without usable non-crowd annotation dropped because filter_empty=True",
}

# at most this many example ids per reason in the summary, so the file stays small
MAX_EXAMPLES = 20


class DataError(ValueError):
    """A problem with the data that stops loading; the message says what and how to fix it."""


class AnnotationFileError(DataError):
    """The annotation json is missing, not json, or not COCO-shaped."""


class EmptyDatasetError(DataError):
    """Nothing is left to load after the checks."""


class SkipLog:
    """Counts (and keeps a few examples of) everything the checks skipped or repaired."""

    def __init__(self) -> None:
        self.counts: dict[str, int] = {k: 0 for k in SKIP_REASONS}
        self.examples: dict[str, list[Any]] = {k: [] for k in SKIP_REASONS}

    def add(self, reason: str, example: Any = None) -> None:
        if reason not in self.counts:
            raise KeyError(f"unknown skip reason {reason!r}")
        self.counts[reason] += 1
        if example is not None and len(self.examples[reason]) < MAX_EXAMPLES:
            self.examples[reason].append(example)

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}

    def log(self, source: str) -> None:
        for reason, n in self.nonzero().items():
            # repairs and expected COCO features are info; lost data is a warning
            level = logging.INFO if reason in ("crowd", "empty_image", "converted_mode") else logging.WARNING
            logger.log(level, "%s: %d x %s (%s); e.g. %s", source, n, reason, SKIP_REASONS[reason],
                       self.examples[reason][:5])


# ----------------------------------------------------------------------------- json


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances json; raise AnnotationFileError naming the file and the fix."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise AnnotationFileError(
            f"annotation file not found: {path}. Fix: check the dataset root and the split's "
            f"'ann' path in the data config (relative roots resolve against the launch directory)."
        ) from None
    except OSError as e:
        raise AnnotationFileError(f"cannot read annotation file {path}: {e}") from e
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as e:
        raise AnnotationFileError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos}, "
            f"file has {len(raw)} bytes). Fix: the file is probably truncated or hand-edited; "
            f"re-download or re-generate it (check with `python -m json.tool {path}`)."
        ) from None
    except UnicodeDecodeError as e:
        raise AnnotationFileError(f"{path} is not UTF-8 text ({e}); is it really a json file?") from None
    if not isinstance(data, dict):
        raise AnnotationFileError(f"{path}: top level must be a JSON object, got {type(data).__name__}.")
    missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationFileError(
            f"{path}: not a COCO instances file, list(s) {missing} missing (keys found: {sorted(data)}). "
            f"Fix: point 'ann' at an instances_*.json; convert VOC/YOLO with tools/convert_dataset.py."
        )
    if not isinstance(data.get("annotations", []), list):
        raise AnnotationFileError(f"{path}: 'annotations' must be a list.")
    data.setdefault("annotations", [])  # image_info_test-style files have none
    return data


def write_json_atomic(obj: Any, path: str | Path, **dump_kwargs: Any) -> None:
    """Write json via a temp file + os.replace so readers never see half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(obj, f, **dump_kwargs)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageCheck:
    problem: str | None  # None, "missing_image" or "unreadable_image"
    size: tuple[int, int] | None  # (w, h) from the file
    mode: str | None
    detail: str = ""


def check_image(path: str | Path, decode: bool = True) -> ImageCheck:
    """Open an image; with decode=True also decode it to catch truncation.

    JPEGs are decoded in draft mode (DCT scaling to ~1/8 size): the whole entropy-coded
    stream is still read, so truncation is caught, at a fraction of a full decode's cost.
    """
    try:
        with Image.open(path) as im:
            size, mode = im.size, im.mode
            if decode:
                if im.format == "JPEG":
                    im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
                im.load()
    except FileNotFoundError:
        return ImageCheck("missing_image", None, None, "not found")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError, EOFError) as e:
        return ImageCheck("unreadable_image", None, None, f"{type(e).__name__}: {e}")
    return ImageCheck(None, size, mode)


def check_images(paths: Sequence[Path], decode: bool, num_threads: int | None = None) -> list[ImageCheck]:
    # PIL releases the GIL while decoding, so a few threads help on big datasets
    if not paths:
        return []
    if not decode:
        # existence only (one stat per file): a wrong images dir is the most common mistake
        return [ImageCheck(None, None, None) if p.is_file() else ImageCheck("missing_image", None, None, "not found")
                for p in paths]
    n = num_threads or min(8, os.cpu_count() or 1)
    if n <= 1 or len(paths) < 16:
        return [check_image(p) for p in paths]
    with ThreadPoolExecutor(max_workers=n) as ex:
        return list(ex.map(check_image, paths, chunksize=16))


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (grayscale, CMYK, RGBA, palette, 16-bit)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert would clip, so rescale to 8 bit by the max value
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a * 255.0 + 0.5 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning
    return im.convert("RGB")


# ----------------------------------------------------------------------------- annotations


@dataclass
class CheckedCoco:
    """The result of validate_coco: what survived, in json order."""

    categories: list[dict[str, Any]]  # sorted by id, all of them
    images: list[dict[str, Any]]  # kept image entries (width/height filled in)
    boxes: list[np.ndarray]  # per kept image: float32 (N, 4) xyxy original pixels, non-crowd
    cat_ids: list[np.ndarray]  # per kept image: int64 (N,) json category ids
    annotations: list[dict[str, Any]]  # kept annotations incl. crowd (clipped), for .coco
    skips: SkipLog = field(default_factory=SkipLog)


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_categories(cats: list[Any], source: str) -> list[dict[str, Any]]:
    if not cats:
        raise AnnotationFileError(f"{source}: 'categories' is empty; a detection dataset needs at least one.")
    seen: set[int] = set()
    for c in cats:
        if not isinstance(c, Mapping) or not _is_int(c.get("id")):
            raise AnnotationFileError(f"{source}: category entry without an int 'id': {c!r}")
        if c["id"] in seen:
            raise AnnotationFileError(f"{source}: duplicate category id {c['id']}")
        seen.add(c["id"])
    return sorted((dict(c) for c in cats), key=lambda c: c["id"])


def check_box(bbox: Any, width: float, height: float) -> tuple[str | None, list[float] | None]:
    """Validate one COCO [x, y, w, h] box against the image size.

    Returns (reason, xyxy): reason None = fine, "clipped_box" = fixed (xyxy clipped),
    "degenerate_box"/"outside_box" = unusable (xyxy None).
    """
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "degenerate_box", None
    try:
        x, y, w, h = (float(v) for v in bbox)
    except (TypeError, ValueError):
        return "degenerate_box", None
    if not all(math.isfinite(v) for v in (x, y, w, h)) or w <= 0 or h <= 0:
        return "degenerate_box", None
    x1, y1, x2, y2 = x, y, x + w, y + h
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return "outside_box", None
    c = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if c != [x1, y1, x2, y2]:
        return "clipped_box", c
    return None, c


def validate_coco(
    data: Mapping[str, Any],
    image_dir: str | Path,
    *,
    verify_images: bool = True,
    source: str = "<json>",
) -> CheckedCoco:
    """Check a loaded COCO dict against the image folder; see SKIP_REASONS for the policy."""
    image_dir = Path(image_dir)
    skips = SkipLog()
    categories = _check_categories(data["categories"], source)
    known_cats = {c["id"] for c in categories}

    # --- image entries
    entries: list[dict[str, Any]] = []
    all_ids: set[Any] = set()
    for im in data["images"]:
        ok = isinstance(im, Mapping) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str)
        if not ok or im["id"] in all_ids:
            skips.add("invalid_image_entry", im.get("id") if isinstance(im, Mapping) else None)
            continue
        all_ids.add(im["id"])
        entries.append(dict(im))

    paths = [image_dir / e["file_name"] for e in entries]
    checks = check_images(paths, decode=verify_images)
    images: list[dict[str, Any]] = []
    for e, p, chk in zip(entries, paths, checks):
        if chk.problem:
            skips.add(chk.problem, e["file_name"])
            continue
        w, h = e.get("width"), e.get("height")
        if not (_is_int(w) and _is_int(h) and w > 0 and h > 0):
            if chk.size is None:  # not verified: read just the header
                chk = check_image(p, decode=False)
                if chk.problem:
                    skips.add(chk.problem, e["file_name"])
                    continue
            e["width"], e["height"] = chk.size  # e.g. converted datasets without sizes
        elif chk.size is not None and tuple(chk.size) != (w, h):
            skips.add("size_mismatch", {"file_name": e["file_name"], "json": [w, h], "file": list(chk.size)})
            continue
        if chk.mode is not None and chk.mode != "RGB":
            skips.add("converted_mode", {"file_name": e["file_name"], "mode": chk.mode})
        images.append(e)

    if entries and not images:
        n_missing = skips.counts["missing_image"]
        raise EmptyDatasetError(
            f"{source}: none of the {len(entries)} images listed could be used "
            f"({n_missing} not found under {image_dir}, {skips.counts['unreadable_image']} unreadable, "
            f"{skips.counts['size_mismatch']} with wrong sizes). Fix: check the split's 'images' folder "
            f"in the data config; e.g. first missing: {skips.examples['missing_image'][:3]}"
        )

    # --- annotations
    kept = {e["id"]: i for i, e in enumerate(images)}
    per_boxes: list[list[list[float]]] = [[] for _ in images]
    per_cats: list[list[int]] = [[] for _ in images]
    annotations: list[dict[str, Any]] = []
    next_ann_id = 1 + max((a.get("id", 0) for a in data["annotations"]
                           if isinstance(a, Mapping) and _is_int(a.get("id"))), default=0)
    for a in data["annotations"]:
        if not isinstance(a, Mapping):
            skips.add("degenerate_box", None)
            continue
        ann_id = a.get("id")
        img_id = a.get("image_id")
        if img_id not in all_ids:
            skips.add("unknown_image", {"ann": ann_id, "image_id": img_id})
            continue
        if img_id not in kept:
            continue  # its image was dropped (and counted) above
        if a.get("category_id") not in known_cats:
            skips.add("unknown_category", {"ann": ann_id, "category_id": a.get("category_id")})
            continue
        idx = kept[img_id]
        reason, xyxy = check_box(a.get("bbox"), images[idx]["width"], images[idx]["height"])
        if xyxy is None:
            skips.add(reason, ann_id)  # type: ignore[arg-type]
            continue
        if reason:
            skips.add(reason, ann_id)
        ann = dict(a)
        if not _is_int(ann_id):
            ann["id"], next_ann_id = next_ann_id, next_ann_id + 1
        ann["bbox"] = [xyxy[0], xyxy[1], xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]]
        area = ann.get("area")
        if reason or not isinstance(area, (int, float)) or isinstance(area, bool) or area <= 0:
            # COCOeval bins by area; a clipped box's old area would be stale
            ann["area"] = ann["bbox"][2] * ann["bbox"][3]
        ann["iscrowd"] = int(bool(ann.get("iscrowd", 0)))
        annotations.append(ann)
        if ann["iscrowd"]:
            skips.add("crowd", ann["id"])
            continue
        per_boxes[idx].append(xyxy)
        per_cats[idx].append(ann["category_id"])

    boxes = [np.asarray(b, dtype=np.float32).reshape(-1, 4) for b in per_boxes]
    cat_ids = [np.asarray(c, dtype=np.int64).reshape(-1) for c in per_cats]
    for e, b in zip(images, boxes):
        if len(b) == 0:
            skips.add("empty_image", e["id"])
    return CheckedCoco(categories, images, boxes, cat_ids, annotations, skips)


# ----------------------------------------------------------------------------- summary


def skip_summary(dataset: Any) -> dict[str, Any]:
    """A JSON-able summary of what a dataset's checks skipped (dataset: CocoDetection)."""
    log: SkipLog = dataset.skip_log
    return {
        "name": getattr(dataset, "name", None),
        "image_dir": str(getattr(dataset, "image_dir", "")),
        "ann_file": str(getattr(dataset, "ann_file", "")),
        "num_images": len(dataset),
        "num_annotations": int(sum(len(b) for b in getattr(dataset, "_boxes", []))),
        "counts": dict(log.counts),
        "examples": {k: v for k, v in log.examples.items() if v},
        "reasons": SKIP_REASONS,
    }


def write_skip_summary(dataset: Any | Iterable[Any], path: str | Path) -> dict[str, Any]:
    """Write what the checks skipped to `path` (json). Several datasets -> a list under "datasets"."""
    if isinstance(dataset, (list, tuple)):
        out: dict[str, Any] = {"datasets": [skip_summary(d) for d in dataset]}
    else:
        out = skip_summary(dataset)
    write_json_atomic(out, path, indent=2, default=str)
    return out
