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
import stat
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from gn_detect.io import parse_json, paused_gc, stat_key, write_json_atomic

from gn_detect.image_io import file_problem, problem_of, read_header

logger = logging.getLogger(__name__)

# reason -> what happened to the item. The key set is fixed so data_skipped.json always has
# the same schema (zeros included) and runs can be compared.
SKIP_REASONS: dict[str, str] = {
    "invalid_image_entry": "image entry without an int id (fitting 64 bits) or a non-empty file_name: image dropped",
    "duplicate_image_id": "several image entries share one id: every one of them dropped, with every annotation "
                          "naming that id (which boxes belong to which image is ambiguous)",
    "duplicate_image_file": "one image file listed under several ids: the first entry kept, the later ones dropped "
                            "with their annotations (the same pixels would carry two sets of boxes)",
    "outside_image_dir": "file_name is absolute or its '..' parts leave the images folder: image dropped, never "
                         "opened (the path as written is checked; symlinks inside the folder are followed)",
    "missing_image": "image file not found: image dropped",
    "not_a_regular_file": "image path is a FIFO, socket, device or folder: image dropped, never opened (reading a "
                          "FIFO would block forever)",
    "unreadable_image": "image file cannot be decoded (corrupt, truncated, not an image): image dropped",
    "image_too_large": "image has more pixels than PIL's decompression-bomb limit (gn_detect/image_io.py "
                       "MAX_PIXELS): image dropped, never decoded",
    "size_mismatch": "json width/height differ from the image file: image dropped (its boxes would be wrong)",
    "converted_mode": "image is not 8-bit RGB (grayscale, CMYK, RGBA, palette, 16-bit): converted to RGB when read",
    "unknown_image": "annotation names an image id that is not in 'images': annotation skipped",
    "unknown_category": "annotation names a category id that is not in 'categories': annotation skipped",
    "duplicate_annotation_id": "several annotations share one id: the repeats get new ids in memory (pycocotools "
                               "would keep one box per id), every box kept",
    "invalid_bbox_type": "bbox values that are not numbers (strings, booleans, null): annotation skipped",
    "degenerate_box": "bbox missing, not 4 finite numbers, or width/height <= 0: annotation skipped",
    "tiny_box": "bbox width or height under 1e-2 pixels (after clipping to the image): annotation skipped",
    "outside_box": "bbox entirely outside the image: annotation skipped",
    "clipped_box": "bbox partly outside the image: clipped to the image, kept",
    "invalid_iscrowd": "iscrowd is not 0, 1, true or false (a string such as \"0\", 2, null, a float): annotation "
                       "skipped (bool(\"0\") would make it a crowd box)",
    "crowd": "iscrowd=1: excluded from training targets, kept in .coco so evaluation ignores it like COCO does",
    "empty_image": "image without any usable non-crowd annotation (counted; kept unless filter_empty)",
    "filtered_empty": "image without usable non-crowd annotation dropped because filter_empty=True",
    "other_class": "annotation of a category not in data.classes: annotation skipped (the category is left out)",
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

    def merge(self, other: "SkipLog") -> None:
        """Adds ``other``'s counts and examples (up to MAX_EXAMPLES per reason)."""
        for reason, n in other.counts.items():
            self.counts[reason] += n
            room = MAX_EXAMPLES - len(self.examples[reason])
            self.examples[reason].extend(other.examples[reason][:max(room, 0)])

    def nonzero(self) -> dict[str, int]:
        return {k: v for k, v in self.counts.items() if v}

    def log(self, source: str) -> None:
        for reason, n in self.nonzero().items():
            # repairs and expected COCO features are info; lost data is a warning
            level = logging.INFO if reason in ("crowd", "empty_image", "converted_mode") else logging.WARNING
            logger.log(level, "%s: %d x %s (%s); e.g. %s", source, n, reason, SKIP_REASONS[reason],
                       self.examples[reason][:5])


# ----------------------------------------------------------------------------- json


FileKey = tuple[str, int, int, int, int]


def file_key(path: str | Path) -> FileKey | None:
    """The file's gn_detect/io.py:``stat_key`` now, None if it cannot be stat'ed."""
    try:
        return stat_key(path, os.stat(path))
    except OSError:
        return None


def too_deep(path: str | Path) -> AnnotationFileError:
    """The one line for a json nested too deeply to parse or to copy (some hundreds of levels: Python's
    recursion limit, which pickling a value reaches at about half the depth parsing does)."""
    return AnnotationFileError(f"{path}: JSON nested too deeply (hundreds of levels); a COCO instances "
                               "file is a few levels deep. Fix: re-generate the file")


def read_json_bytes(path: str | Path) -> tuple[bytes, os.stat_result]:
    """An annotation file's bytes and its stat at the time they were read; AnnotationFileError
    naming the file and the fix. Opened non-blocking and checked on the open descriptor: a FIFO or
    device named as the json is refused instead of blocking the start forever."""
    path = Path(path)
    not_a_file = AnnotationFileError(f"annotation file {path} is not a regular file (a folder, FIFO, socket or "
                                     "device). Fix: point the split's 'ann' at an instances json file")
    try:
        with open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK)) as f:
            st = os.fstat(f.fileno())
            if not stat.S_ISREG(st.st_mode):
                raise not_a_file
            return f.read(), st
    except IsADirectoryError:
        raise not_a_file from None
    except FileNotFoundError:
        raise AnnotationFileError(
            f"annotation file not found: {path}. Fix: check the dataset root and the split's "
            f"'ann' path in the data config (relative roots resolve against the launch directory)."
        ) from None
    except OSError as e:
        raise AnnotationFileError(f"cannot read annotation file {path}: {e}") from e


def load_coco_json(path: str | Path) -> dict[str, Any]:
    """Read a COCO instances json; raise AnnotationFileError naming the file and the fix."""
    return parse_coco_json(path, read_json_bytes(path)[0])


def parse_coco_json(path: str | Path, raw: bytes) -> dict[str, Any]:
    """The COCO instances json ``raw`` (the bytes of ``path``); AnnotationFileError naming the file
    and the fix."""
    path = Path(path)
    try:
        data = parse_json(raw)
    except json.JSONDecodeError as e:
        raise AnnotationFileError(
            f"{path} is not valid JSON: {e.msg} at line {e.lineno} column {e.colno} (char {e.pos}, "
            f"file has {len(raw)} bytes). Fix: the file is probably truncated or hand-edited; "
            f"re-download or re-generate it (check with `python -m json.tool {path}`)."
        ) from None
    except UnicodeDecodeError as e:
        raise AnnotationFileError(f"{path} is not UTF-8 text ({e}); is it really a json file?") from None
    except ValueError as e:  # Python's int-string limit: "Exceeds the limit (4300 digits) for integer string ..."
        raise AnnotationFileError(f"{path}: a number in the JSON cannot be read ({str(e).split(';')[0]}); no COCO "
                                  "field needs more than 19 digits. Fix: re-generate the file, or correct that number"
                                  ) from None
    except RecursionError:
        raise too_deep(path) from None
    if not isinstance(data, dict):
        raise AnnotationFileError(f"{path}: top level must be a JSON object, got {type(data).__name__}.")
    missing = [k for k in ("images", "categories") if not isinstance(data.get(k), list)]
    if missing:
        raise AnnotationFileError(
            f"{path}: not a COCO instances file, {missing} missing or not lists (keys found: {sorted(data)[:20]}). "
            f"Fix: point 'ann' at an instances_*.json; convert VOC/YOLO with tools/convert_dataset.py."
        )
    if not isinstance(data.get("annotations", []), list):
        raise AnnotationFileError(f"{path}: 'annotations' must be a list.")
    data.setdefault("annotations", [])  # image_info_test-style files have none
    return data


# ----------------------------------------------------------------------------- images


@dataclass(frozen=True)
class ImageCheck:
    problem: str | None  # None or image_io.problem_of's reason ("missing_image", "not_a_regular_file", ...)
    size: tuple[int, int] | None  # (w, h) from the file
    mode: str | None
    detail: str = ""


def check_image(path: str | Path, decode: bool = True) -> ImageCheck:
    """Open an image (gn_detect/image_io.py); with decode=True also decode it to catch truncation."""
    try:
        size, mode = read_header(path, decode=decode)
    except OSError as e:
        return ImageCheck(problem_of(e), None, None, str(e))
    return ImageCheck(None, size, mode)


def check_images(paths: Sequence[str | Path], decode: bool, num_threads: int | None = None) -> list[ImageCheck]:
    # PIL releases the GIL while decoding, so a few threads help on big datasets
    if not paths:
        return []
    if not decode:
        # existence only (one stat per file): a wrong images dir is the most common mistake
        return [ImageCheck(None, None, None) if (why := file_problem(p)) is None else ImageCheck(why, None, None)
                for p in paths]
    rank, world = _dist_rank_world()
    if world > 1 and rank != 0:
        _barrier()  # rank 0 verifies and records first; this rank then reads its records
    record = VerificationRecord.load(paths)
    found = [record.get(i) for i in range(len(paths))]
    todo = [i for i, chk in enumerate(found) if chk is None]
    if todo:
        for i, chk in zip(todo, _decode_all([paths[i] for i in todo], num_threads)):
            record.put(i, chk)
            found[i] = chk
        record.save()
    if world > 1 and rank == 0:
        _barrier()
    return found  # type: ignore[return-value] - every None was filled


def _decode_all(paths: Sequence[Path], num_threads: int | None) -> list[ImageCheck]:
    """check_image on every path, in threads, with a progress bar when it takes a few seconds."""
    from tqdm import tqdm

    n = num_threads or min(8, os.cpu_count() or 1)
    bar = tqdm(total=len(paths), desc="verifying images", unit="img", delay=3, mininterval=1, leave=False)
    try:
        if n <= 1 or len(paths) < 16:
            out = []
            for p in paths:
                out.append(check_image(p))
                bar.update()
            return out
        with ThreadPoolExecutor(max_workers=n) as ex:
            out = []
            for chk in ex.map(check_image, paths, chunksize=16):
                out.append(chk)
                bar.update()
            return out
    finally:
        bar.close()


def _dist_rank_world() -> tuple[int, int]:
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _barrier() -> None:
    import torch.distributed as dist

    dist.barrier()


def cache_dir() -> Path:
    """Where gn-detect keeps what it may reuse between runs: ``$GN_DETECT_CACHE``, else
    ``$XDG_CACHE_HOME/gn_detect``, else ``~/.cache/gn_detect`` (the data folder may be read-only)."""
    if os.environ.get("GN_DETECT_CACHE"):
        return Path(os.environ["GN_DETECT_CACHE"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache").expanduser() / "gn_detect"


class VerificationRecord:
    """What ``verify_images`` found for each image of one folder, kept in
    ``cache_dir()/verified/<hash of the folder>.json`` so a later start (another run of a
    sweep, another rank, a resume) does not decode the images again.

    An entry is keyed by the file's path (relative to the folder), size and mtime (ns); one whose
    key does not match the file on disk now is not trusted (decoded again). Written atomically;
    an unreadable or foreign record is ignored. A cache that cannot be written only costs time.
    """

    VERSION = 1

    def __init__(self, folder: Path, names: list[str], keys: list[tuple[int, int] | None],
                 entries: dict[str, list[Any]]) -> None:
        self.folder, self.names, self.keys, self.entries = folder, names, keys, entries
        self.changed = False

    @staticmethod
    def path_for(folder: Path) -> Path:
        import hashlib

        digest = hashlib.sha256(str(folder).encode()).hexdigest()[:24]
        return cache_dir() / "verified" / f"{digest}.json"

    @classmethod
    def load(cls, paths: Sequence[str | Path]) -> "VerificationRecord":
        absolute = [os.path.abspath(p) for p in paths]
        folder = Path(os.path.commonpath(list({os.path.dirname(p) for p in absolute})))  # a few distinct folders
        cut = len(str(folder).rstrip(os.sep)) + 1
        names, keys = [], []
        for p in absolute:
            names.append(p[cut:])
            try:
                st = os.stat(p)
                keys.append((st.st_size, st.st_mtime_ns))
            except OSError:
                keys.append(None)
        entries: dict[str, list[Any]] = {}
        try:
            raw = parse_json(cls.path_for(folder).read_bytes())
            if raw.get("version") == cls.VERSION and raw.get("folder") == str(folder) \
                    and isinstance(raw.get("entries"), dict):
                entries = raw["entries"]
        except (OSError, ValueError, AttributeError):
            pass
        return cls(folder, names, keys, entries)

    def get(self, i: int) -> ImageCheck | None:
        """The recorded check of image ``i``, None when there is none for the file as it is now."""
        e, key = self.entries.get(self.names[i]), self.keys[i]
        if key is None or not isinstance(e, list) or len(e) != 6 or tuple(e[:2]) != key:
            return None
        problem, size, mode, detail = e[2:]
        return ImageCheck(problem, tuple(size) if size else None, mode, str(detail or ""))

    def put(self, i: int, chk: ImageCheck) -> None:
        if self.keys[i] is None or chk.problem == "missing_image":
            return
        self.entries[self.names[i]] = [*self.keys[i], chk.problem, list(chk.size) if chk.size else None, chk.mode,
                                       chk.detail[:300]]
        self.changed = True

    def save(self) -> None:
        if not self.changed:
            return
        try:
            write_json_atomic(self.path_for(self.folder), {"version": self.VERSION, "folder": str(self.folder),
                                                           "entries": self.entries}, indent=None)
        except OSError as e:
            logger.info("image verification record not written (%s); the next start verifies again", e)


# ----------------------------------------------------------------------------- annotations


class AnnotationColumns:
    """Checked annotations (crowd included, boxes clipped), in json order, as flat arrays of the
    fields box evaluation reads; ``records()`` gives them as COCO dicts (an int area below 2**53
    stays an int)."""

    FIELDS = ("ints", "bbox", "area", "area_is_int")

    def __init__(self, ints: np.ndarray, bbox: np.ndarray, area: np.ndarray, area_is_int: np.ndarray) -> None:
        n = len(area)
        if ints.shape != (n, 4) or bbox.shape != (n, 4) or area_is_int.shape != (n,):
            raise ValueError(f"annotation columns of unequal lengths: {ints.shape}, {bbox.shape}, {area.shape}, "
                             f"{area_is_int.shape}")
        self.ints = ints.astype(np.int64, copy=False)  # id, image_id, category_id, iscrowd
        self.bbox = bbox.astype(np.float64, copy=False)  # x, y, w, h
        self.area = area.astype(np.float64, copy=False)
        self.area_is_int = area_is_int.astype(bool, copy=False)

    @classmethod
    def from_lists(cls, ints: list[int], bbox: list[float], area: list[Any]) -> "AnnotationColumns":
        """From the annotation pass's flat lists: ``ints`` and ``bbox`` four values per annotation."""
        n = len(area)
        return cls(np.fromiter(ints, np.int64, 4 * n).reshape(n, 4), np.fromiter(bbox, np.float64, 4 * n).reshape(n, 4),
                   np.fromiter(area, np.float64, n), np.fromiter((type(a) is int for a in area), bool, n))

    def __len__(self) -> int:
        return len(self.area)

    @property
    def image_ids(self) -> np.ndarray:
        return self.ints[:, 1]

    def select(self, keep: np.ndarray) -> "AnnotationColumns":
        """The annotations where the boolean ``keep`` is true."""
        return AnnotationColumns(self.ints[keep], self.bbox[keep], self.area[keep], self.area_is_int[keep])

    def records(self) -> list[dict[str, Any]]:
        areas = [int(v) if i else v for v, i in zip(self.area.tolist(), self.area_is_int.tolist())]
        return [{"id": i, "image_id": im, "category_id": c, "bbox": b, "area": ar, "iscrowd": cr}
                for (i, im, c, cr), b, ar in zip(self.ints.tolist(), self.bbox.tolist(), areas)]


@dataclass
class CheckedCoco:
    """The result of validate_coco: what survived, in json order; boxes as flat arrays (image order)."""

    categories: list[dict[str, Any]]  # sorted by id, all of them
    images: list[dict[str, Any]]  # kept image entries (width/height filled in when the images were opened)
    box_counts: np.ndarray  # int64, per kept image: its usable non-crowd boxes
    boxes: np.ndarray  # float32 (sum(box_counts), 4) xyxy original pixels: image by image, json order within one
    cat_ids: np.ndarray  # int64 (sum(box_counts),) json category ids of ``boxes``
    annotations: AnnotationColumns  # kept annotations incl. crowd (clipped): for .coco
    skips: SkipLog = field(default_factory=SkipLog)
    annotation_skips: SkipLog = field(default_factory=SkipLog)  # the annotation pass's share of ``skips``


def _json_size(e: Mapping[str, Any]) -> tuple[Any, Any]:
    """An image entry's (width, height) when the json gives both as positive ints, else unbounded
    (the json-only checks then check only the box itself)."""
    w, h = e.get("width"), e.get("height")
    if _is_int(w) and _is_int(h) and w > 0 and h > 0:
        return w, h
    return math.inf, math.inf


def _image_layout(images: list[dict[str, Any]]) -> list[tuple[Any, Any, Any]]:
    """What the annotation pass reads of the kept images: their ids, in order, and sizes."""
    return [(e["id"], *_json_size(e)) for e in images]


INT64 = (-2**63, 2**63)  # ids are stored as int64 (NumPy, pycocotools, torch): anything outside is no id


def _is_int(x: Any) -> bool:
    """An int (not a bool) that fits int64: a valid COCO id."""
    if type(x) is int:  # what json gives: the fast path of the same rule
        return INT64[0] <= x < INT64[1]
    return isinstance(x, int) and not isinstance(x, bool) and INT64[0] <= x < INT64[1]


def crowd_of(ann: Mapping[str, Any]) -> int | None:
    """An annotation's ``iscrowd`` as 0 or 1 (missing = 0); None unless it is 0, 1, true or false."""
    v = ann.get("iscrowd", 0)
    if type(v) is int:  # what json gives: the fast path of the same rule
        return v if v == 0 or v == 1 else None
    return int(v) if isinstance(v, (bool, int)) and v in (0, 1) else None


def _check_categories(cats: list[Any], source: str) -> list[dict[str, Any]]:
    if not cats:
        raise AnnotationFileError(f"{source}: 'categories' is empty; a detection dataset needs at least one.")
    seen: set[int] = set()
    for c in cats:
        if not isinstance(c, Mapping) or not _is_int(c.get("id")):
            raise AnnotationFileError(f"{source}: category entry without an int 'id' (64-bit): {str(c)[:200]}. "
                                      f"Fix: give each category an integer id")
        if c["id"] in seen:
            raise AnnotationFileError(f"{source}: duplicate category id {c['id']}")
        seen.add(c["id"])
    return sorted((dict(c) for c in cats), key=lambda c: c["id"])


def categories_of(x: Any) -> list[dict[str, Any]]:
    """The categories, sorted by id and checked, of a dataset (``.categories``), a COCO object
    (``.dataset``), a COCO dict, or a list of category dicts."""
    if isinstance(getattr(x, "categories", None), list):
        cats, what = x.categories, str(getattr(x, "name", "dataset"))
    elif isinstance(getattr(x, "dataset", None), Mapping):
        cats, what = x.dataset.get("categories", []), "COCO object"
    elif isinstance(x, Mapping):
        cats, what = x.get("categories", []), "COCO dict"
    elif isinstance(x, (list, tuple)):
        cats, what = list(x), "category list"
    else:
        raise TypeError(f"cannot read categories from a {type(x).__name__}: pass a dataset, a COCO object or dict, "
                        "or a list of category dicts")
    return _check_categories(cats, what)


def _set_name(x: Any, role: str) -> str:
    name = getattr(x, "name", None)
    return f"{role} ({name})" if isinstance(name, str) else role


def check_same_categories(train_set: Any, val_set: Any, *, map_by_name: bool = False) -> list[int]:
    """The category id, in the evaluation set, of each contiguous training label.

    ``train_set`` / ``val_set``: datasets, COCO objects or dicts, or category lists (see
    ``categories_of``). By default both must list the same ids with the same names; then the
    result is the shared ``label_to_cat_id``. With ``map_by_name`` the ids may differ and are
    matched by name (every name exactly once on each side). Anything else raises a one-line
    ``ValueError`` naming the first differences and the fix: scoring a model's classes as
    other classes gives numbers that look fine and mean nothing.
    """
    train, val = categories_of(train_set), categories_of(val_set)
    a, b = _set_name(train_set, "training"), _set_name(val_set, "evaluation")
    if map_by_name:
        return _map_by_name(train, val, a, b)
    t_names = {c["id"]: str(c.get("name")) for c in train}
    v_names = {c["id"]: str(c.get("name")) for c in val}
    diffs = [f"id {i}: {t_names[i]!r} vs {v_names[i]!r}" for i in sorted(t_names.keys() & v_names.keys())
             if t_names[i] != v_names[i]]
    diffs += [f"id {i} ({t_names[i]!r}) only in {a}" for i in sorted(t_names.keys() - v_names.keys())]
    diffs += [f"id {i} ({v_names[i]!r}) only in {b}" for i in sorted(v_names.keys() - t_names.keys())]
    if diffs:
        raise ValueError(
            f"the {a} and {b} categories differ ({len(train)} vs {len(val)} categories, {len(diffs)} differences; "
            f"e.g. {'; '.join(diffs[:5])}), so predictions would be scored as the wrong classes. Fix: evaluate on "
            "data labelled with the training categories (same ids and names), or renumber the evaluation "
            "json's category ids to the training ones if only the ids differ"
        )
    return [c["id"] for c in train]


def _map_by_name(train: list[dict[str, Any]], val: list[dict[str, Any]], a: str, b: str) -> list[int]:
    problems = []
    for role, cats in ((a, train), (b, val)):
        names = [str(c.get("name")) for c in cats]
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            problems.append(f"{role} lists the names {dup[:5]} more than once")
    t_names = {str(c.get("name")): c["id"] for c in train}
    v_names = {str(c.get("name")): c["id"] for c in val}
    if only := sorted(t_names.keys() - v_names.keys()):
        problems.append(f"{len(only)} names only in {a}, e.g. {only[:5]}")
    if only := sorted(v_names.keys() - t_names.keys()):
        problems.append(f"{len(only)} names only in {b}, e.g. {only[:5]}")
    if problems:
        raise ValueError(f"cannot match the {a} and {b} categories by name: {'; '.join(problems)}. Fix: evaluate "
                         "on data with the same category names as the training data (each name once)")
    return [v_names[str(c.get("name"))] for c in train]


# boxes narrower or lower than this many pixels (after clipping) are no training target: a
# 1e-30-wide box would give a regression target of log(1e-30 / anchor)
MIN_BOX_SIDE = 1e-2


_PLAIN = (int, float)  # json's number types (bool excluded: type(True) is bool)


def _usable_area(v: Any) -> bool:
    """A json area COCOeval can bin: a number, finite and positive as a float (NaN, inf and an
    integer beyond float's range are recomputed from the box)."""
    if not _is_number(v):
        return False
    try:
        return 0.0 < float(v) < math.inf
    except OverflowError:
        return False


def _is_number(v: Any) -> bool:
    """An int or float, not a bool ("12" or true would otherwise be read as numbers)."""
    return type(v) in _PLAIN or (isinstance(v, (int, float)) and not isinstance(v, bool))


def check_box(bbox: Any, width: float, height: float) -> tuple[str | None, list[float] | None]:
    """Validate one COCO [x, y, w, h] box against the image size.

    Returns (reason, xyxy): reason None = fine, "clipped_box" = fixed (xyxy clipped),
    "invalid_bbox_type"/"degenerate_box"/"outside_box"/"tiny_box" = unusable (xyxy None).
    """
    if type(bbox) is list and len(bbox) == 4:  # what json gives: the fast path of the same rules
        x, y, w, h = bbox
        if type(x) in _PLAIN and type(y) in _PLAIN and type(w) in _PLAIN and type(h) in _PLAIN:
            return _check_plain_box(x, y, w, h, width, height)
    if not isinstance(bbox, (list, tuple)) or len(bbox) != 4:
        return "degenerate_box", None
    if not all(_is_number(v) for v in bbox):
        return "invalid_bbox_type", None  # "12" or true would otherwise be read as numbers
    return _check_plain_box(*bbox, width, height)


def _check_plain_box(x: Any, y: Any, w: Any, h: Any, width: float, height: float) -> tuple[str | None, list[float] | None]:
    """check_box of four numbers."""
    try:
        x, y, w, h = float(x), float(y), float(w), float(h)
    except OverflowError:  # an int beyond float's range (10**400)
        return "degenerate_box", None
    if not (math.isfinite(x) and math.isfinite(y) and math.isfinite(w) and math.isfinite(h)) or w <= 0 or h <= 0:
        return "degenerate_box", None
    x1, y1, x2, y2 = x, y, x + w, y + h
    if x1 >= width or y1 >= height or x2 <= 0 or y2 <= 0:
        return "outside_box", None
    c = [max(x1, 0.0), max(y1, 0.0), min(x2, float(width)), min(y2, float(height))]
    if c[2] - c[0] < MIN_BOX_SIDE or c[3] - c[1] < MIN_BOX_SIDE:
        return "tiny_box", None
    if c != [x1, y1, x2, y2]:
        return "clipped_box", c
    return None, c


def file_name_problem(file_name: str) -> str | None:
    """Why ``file_name`` cannot name a file inside the images folder, or None.

    Lexical check of the path as written (``os.path.normpath``, nothing resolved): absolute
    paths and ``..`` parts that climb out of the folder are refused, so a json cannot make us
    open ``/etc/passwd``; symlinks *inside* the folder (a common way to assemble a dataset)
    are followed as usual.
    """
    norm = os.path.normpath(file_name)  # "" -> "."
    if norm == "." or "\x00" in file_name:
        return "invalid_image_entry"
    if os.path.isabs(norm) or norm == os.pardir or norm.startswith(os.pardir + os.sep):
        return "outside_image_dir"
    return None


def _usable_entries(image_entries: list[Any], skips: SkipLog) -> tuple[list[dict[str, Any]], set[Any]]:
    """(entries with a unique int id and a safe file_name, every int id listed); counts the rest.
    The entries are the json's own objects (not copies).

    Every entry of an id listed more than once is dropped (not just the repeats): the
    annotations name the id only, so which boxes belong to which entry is unknowable.
    """
    valid = []
    for im in image_entries:
        if isinstance(im, Mapping) and _is_int(im.get("id")) and isinstance(im.get("file_name"), str):
            valid.append(im)
        else:
            skips.add("invalid_image_entry", im.get("id") if isinstance(im, Mapping) else None)
    seen: dict[int, int] = {}
    for im in valid:
        seen[im["id"]] = seen.get(im["id"], 0) + 1
    entries: list[dict[str, Any]] = []
    files: set[str] = set()  # normalised file names kept so far: a later entry of the same file is dropped
    for im in valid:
        problem = "duplicate_image_id" if seen[im["id"]] > 1 else file_name_problem(im["file_name"])
        if problem is None and os.path.normpath(im["file_name"]) in files:
            problem = "duplicate_image_file"
        if problem:
            skips.add(problem, {"id": im["id"], "file_name": im["file_name"]})
            continue
        files.add(os.path.normpath(im["file_name"]))
        entries.append(im)
    return entries, set(seen)


def _check_image_entries(
    image_entries: list[Any], image_dir: Path, verify_images: bool, skips: SkipLog, source: str,
    open_images: bool = True,
) -> tuple[list[dict[str, Any]], set[Any]]:
    """(usable image entries, every valid id listed); counts the rest. The images opened: copies of
    the entries, width/height filled in from the files where the json lacks them.
    ``open_images=False`` (the pre-flight): no file is opened or stat'ed, and the entries are the
    json's (a size it does not give is unbounded: :func:`_json_size`)."""
    entries, all_ids = _usable_entries(image_entries, skips)
    if not open_images:
        return entries, all_ids
    entries = [dict(e) for e in entries]  # width/height are filled in below: the json's entries stay as given
    folder = os.fspath(image_dir)
    paths = [os.path.join(folder, e["file_name"]) for e in entries]  # strings: 118k Path objects cost seconds
    checks = check_images(paths, decode=verify_images)
    images: list[dict[str, Any]] = []
    for e, p, chk in zip(entries, paths, checks):
        if chk.problem:
            skips.add(chk.problem, e["file_name"])
            continue
        w, h = _json_size(e)
        if w == math.inf:
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
    if image_entries and not images:
        raise EmptyDatasetError(_no_image_message(len(image_entries), image_dir, skips, source))
    return images, all_ids


_IMAGE_REASONS = ("invalid_image_entry", "duplicate_image_id", "duplicate_image_file", "outside_image_dir",
                  "missing_image", "not_a_regular_file", "unreadable_image", "size_mismatch")


def _no_image_message(listed: int, image_dir: Path, skips: SkipLog, source: str) -> str:
    """One line: why none of the ``listed`` image entries survived, and what to fix."""
    why = ", ".join(f"{skips.counts[r]} {r}" for r in _IMAGE_REASONS if skips.counts[r])
    worst = max(_IMAGE_REASONS, key=lambda r: skips.counts[r])
    fix = {
        "invalid_image_entry": "give every image entry an int 'id' and a 'file_name'",
        "duplicate_image_id": "give every image entry its own 'id' (annotations refer to images by id)",
        "outside_image_dir": f"make every 'file_name' relative to the images folder {image_dir} (no '..', "
                             "not absolute)",
    }.get(worst, f"check the split's 'images' folder in the data config (now {image_dir})")
    return (f"{source}: none of the {listed} images listed could be used ({why}). Fix: {fix}; "
            f"e.g. {skips.examples[worst][:3]}")


def select_categories(data: dict[str, Any], classes: Sequence[str] | None, source: str) -> tuple[dict[str, Any], list]:
    """(``data`` with only the categories named in ``classes`` and their annotations, the ids of
    the annotations left out); ``classes`` None: unchanged. A name not in the json: DataError."""
    if classes is None:
        return data, []
    cats = [c for c in data.get("categories") or [] if isinstance(c, Mapping)]
    names = {str(c.get("name")): c.get("id") for c in cats}
    if unknown := [n for n in classes if n not in names]:
        raise DataError(f"{source}: data.classes names {unknown} are not categories of the json "
                        f"({sorted(names)[:20]}); check their spelling")
    keep = {names[n] for n in classes}
    anns = data.get("annotations") or []
    kept = [a for a in anns if not isinstance(a, Mapping) or a.get("category_id") in keep]
    other = [a.get("id") for a in anns if isinstance(a, Mapping) and a.get("category_id") not in keep]
    return {**data, "categories": [c for c in cats if c.get("id") in keep], "annotations": kept}, other


def validate_coco(
    data: Mapping[str, Any],
    image_dir: str | Path,
    *,
    verify_images: bool = True,
    source: str = "<json>",
    open_images: bool = True,
    json_checked: CheckedCoco | None = None,
    read_annotations: Callable[[], list[Any]] | None = None,
) -> CheckedCoco:
    """Check a loaded COCO dict against the image folder; see SKIP_REASONS for the policy.
    ``open_images=False``: the same rules on the json alone (the pre-flight: no image opened).
    ``json_checked``: that json-only result for the same ``data``; when the image checks keep
    exactly its images with the same sizes (the usual case), its annotation pass is the one this
    one would make, and is taken instead of repeated (860,000 COCO boxes: seconds).
    ``read_annotations``: where ``data["annotations"]`` comes from when the pass is made (``data``
    may then leave them out: gn_detect/data/json_checks.py)."""
    with paused_gc():  # a million new objects
        return _validate_coco(data, Path(image_dir), verify_images, source, open_images, json_checked,
                              read_annotations or (lambda: data["annotations"]))


def _validate_coco(data: Mapping[str, Any], image_dir: Path, verify_images: bool, source: str, open_images: bool,
                   json_checked: CheckedCoco | None, read_annotations: Callable[[], list[Any]]) -> CheckedCoco:
    skips = SkipLog()
    categories = _check_categories(data["categories"], source)
    images, all_ids = _check_image_entries(data["images"], image_dir, verify_images, skips, source, open_images)
    if json_checked is not None and _image_layout(json_checked.images) == _image_layout(images):
        part = json_checked
    else:
        part = _check_annotations(read_annotations(), images, all_ids, {c["id"] for c in categories})
    skips.merge(part.annotation_skips)
    return CheckedCoco(categories, images, part.box_counts, part.boxes, part.cat_ids, part.annotations, skips,
                       part.annotation_skips)


def _first_new_id(entries: list[Any]) -> int:
    """Where the ids given to annotations without a usable or unique one start: past the largest
    id, or below the smallest when the largest is near int64's end (ids are stored as int64)."""
    ids = [a.get("id") for a in entries if (type(a) is dict or isinstance(a, Mapping)) and _is_int(a.get("id"))]
    top = 1 + max(ids, default=0)
    if top + len(entries) < INT64[1]:
        return top
    bottom = min(ids) - len(entries)
    if bottom >= INT64[0]:
        return bottom
    raise DataError(f"annotation ids span the whole int64 range ({min(ids)} to {max(ids)}), so the annotations "
                    "without a unique id cannot get one. Fix: renumber the annotation ids")


def _check_annotations(entries: list[Any], images: list[dict[str, Any]], all_ids: set[Any],
                       known_cats: set[Any]) -> CheckedCoco:
    """The annotation pass of validate_coco over the kept ``images``: a CheckedCoco of its boxes,
    annotations and skips (``annotation_skips``; categories and images left empty)."""
    skips = SkipLog()
    kept = {e["id"]: i for i, e in enumerate(images)}
    sizes = [_json_size(e) for e in images]
    ints: list[int] = []  # id, image_id, category_id, iscrowd of each kept annotation
    bboxes: list[float] = []  # its clipped x, y, w, h
    areas: list[Any] = []
    box_image: list[int] = []  # per usable non-crowd box: its image's index
    xyxy_flat: list[float] = []
    box_cats: list[int] = []
    next_ann_id = _first_new_id(entries)
    seen_ann_ids: set[int] = set()
    for a in entries:
        if type(a) is not dict and not isinstance(a, Mapping):
            skips.add("degenerate_box", None)
            continue
        ann_id = a.get("id")
        img_id = a.get("image_id")
        if not _member(img_id, all_ids):
            skips.add("unknown_image", {"ann": ann_id, "image_id": img_id})
            continue
        if img_id not in kept:
            continue  # its image was dropped (and counted) above
        cat = a.get("category_id")
        if not _member(cat, known_cats):
            skips.add("unknown_category", {"ann": ann_id, "category_id": cat})
            continue
        crowd = crowd_of(a)
        if crowd is None:
            skips.add("invalid_iscrowd", {"ann": ann_id, "iscrowd": a.get("iscrowd")})
            continue
        idx = kept[img_id]
        reason, xyxy = check_box(a.get("bbox"), *sizes[idx])
        if xyxy is None:
            skips.add(reason, ann_id)  # type: ignore[arg-type]
            continue
        if reason:
            skips.add(reason, ann_id)
        if _is_int(ann_id) and ann_id in seen_ann_ids:
            skips.add("duplicate_annotation_id", ann_id)
        if not _is_int(ann_id) or ann_id in seen_ann_ids:
            ann_id, next_ann_id = next_ann_id, next_ann_id + 1
        seen_ann_ids.add(ann_id)
        w, h = xyxy[2] - xyxy[0], xyxy[3] - xyxy[1]
        area = a.get("area")
        if reason or not _usable_area(area):
            area = w * h  # COCOeval bins by area; a clipped box's old area would be stale
        # what box evaluation reads, nothing else: a segmentation is most of a COCO json's bytes
        # and no part of gn-detect reads it
        ints += (ann_id, img_id, cat, crowd)
        bboxes += (xyxy[0], xyxy[1], w, h)
        areas.append(area)
        if crowd:
            skips.add("crowd", ann_id)
            continue
        box_image.append(idx)
        xyxy_flat += xyxy
        box_cats.append(cat)
    return _annotation_pass(images, box_image, xyxy_flat, box_cats, AnnotationColumns.from_lists(ints, bboxes, areas),
                            skips)


def _member(x: Any, ids: set[Any]) -> bool:
    """``x in ids``; False for an unhashable value (a list or object where an id belongs)."""
    try:
        return x in ids
    except TypeError:
        return False


def _annotation_pass(images: list[dict[str, Any]], box_image: list[int], xyxy_flat: list[float], box_cats: list[int],
                     annotations: AnnotationColumns, skips: SkipLog) -> CheckedCoco:
    """The annotation pass's boxes (json order) put image by image, its empty images counted."""
    where = np.asarray(box_image, dtype=np.int64)
    order = np.argsort(where, kind="stable")
    boxes = np.asarray(xyxy_flat, dtype=np.float32).reshape(-1, 4)[order]
    cat_ids = np.asarray(box_cats, dtype=np.int64).reshape(-1)[order]
    counts = np.bincount(where, minlength=len(images)).astype(np.int64)
    for e, n in zip(images, counts.tolist()):
        if not n:
            skips.add("empty_image", e["id"])
    return CheckedCoco([], [], counts, boxes, cat_ids, annotations, skips, skips)


# ----------------------------------------------------------------------------- summary


def skip_summary(dataset: Any) -> dict[str, Any]:
    """A JSON-able summary of what a dataset's checks skipped (dataset: CocoDetection)."""
    log: SkipLog = dataset.skip_log
    return {
        "name": getattr(dataset, "name", None),
        "image_dir": str(getattr(dataset, "image_dir", "")),
        "ann_file": str(getattr(dataset, "ann_file", "")),
        "num_images": len(dataset),
        "num_annotations": int(getattr(dataset, "num_annotations", 0)),
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
    write_json_atomic(path, out)
    return out
