"""An annotation file read and put through the dataset's checks on the json alone once per content:
the result is kept in ``cache_dir()/checked/`` under the file's BLAKE2b, so a later start of an
unchanged file (the next run of a sweep, a resume, another rank) neither parses nor checks it
again; and :class:`ParsedFiles`, the pre-flight's hand-over of what it read to the run.

What is kept is data only (one ``.npz`` read with ``allow_pickle=False``: the checked boxes and
annotations as arrays, the json without its annotation list as JSON text) and it is keyed by the
file's bytes, the ``data.classes`` selection and the source of the checks themselves, so a changed
file, selection or rule is checked afresh. A record that cannot be read is checked afresh; one that
cannot be written costs time only. Deleting the folder is always safe.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from gn_detect import io as _io
from gn_detect.io import atomic_open, content_digest, fingerprint_bytes, parse_json, stat_key

from . import checks
from .checks import (AnnotationColumns, CheckedCoco, FileKey, SkipLog, cache_dir, file_key, parse_coco_json,
                     read_json_bytes, select_categories, validate_coco)

logger = logging.getLogger(__name__)

__all__ = ["JsonChecks", "ParsedFiles", "classes_key", "read_json_checks"]

Classes = tuple[str, ...] | None


def classes_key(classes: Sequence[str] | None) -> Classes:
    """``data.classes`` as a key: a tuple of names, or None (every category)."""
    return None if classes is None else tuple(str(c) for c in classes)

KEEP_RECORDS = 8  # records kept in cache_dir()/checked/, the least recently used removed first


@dataclass
class JsonChecks:
    """An annotation file with ``data.classes`` selected, and the checks' result on the json alone.

    ``data``: the json, without its ``annotations`` list when it came from a record (not
    ``complete``); :meth:`annotations` reads the list when a build needs it (its images differ from
    what the json lists). ``other``: the ids of the annotations ``classes`` left out; ``listed``:
    how many annotations the selection lists."""

    path: Path
    key: FileKey  # the file's stat key when it was read
    classes: Classes
    data: dict[str, Any]
    checked: CheckedCoco
    other: list[Any]
    listed: int
    digest: str

    @property
    def complete(self) -> bool:
        """Whether ``data`` holds the annotation list (parsed here, not taken from a record)."""
        return "annotations" in self.data

    def annotations(self) -> list[Any]:
        """The selected annotation list, read from the file again when ``data`` leaves it out; a file
        that changed since is refused in one line (its checks describe the old content)."""
        if self.complete:
            return self.data["annotations"]
        raw, _ = read_json_bytes(self.path)
        if content_digest(raw) != self.digest:
            raise checks.DataError(f"{self.path} changed while the run was starting. Fix: start the run again once "
                                   "the file is no longer being written")
        return select_categories(parse_coco_json(self.path, raw), self.classes, str(self.path))[0]["annotations"]


def read_json_checks(path: str | Path, classes: Sequence[str] | None) -> JsonChecks:
    """The file's :class:`JsonChecks`, from its record when one matches the file's content, else
    parsed and checked (and recorded). AnnotationFileError/DataError: one line naming the file."""
    path = Path(path)
    classes = classes_key(classes)
    raw, st = read_json_bytes(path)
    key, digest = stat_key(path, st), fingerprint_bytes(path, st, raw)  # the run description's: not hashed again
    record = _record_path(digest, classes)
    found = None if record is None else _load(record, path, key, classes, digest)
    if found is not None:
        return found
    data, other = select_categories(parse_coco_json(path, raw), classes, str(path))
    del raw
    checked = validate_coco(data, path.parent, verify_images=False, source=str(path), open_images=False)
    out = JsonChecks(path, key, classes, data, checked, other, len(data["annotations"]), digest)
    if record is not None and os.environ.get("LOCAL_RANK", "0") == "0":  # one writer per node under torchrun
        _save(record, out)
    return out


# ----------------------------------------------------------------------------- the record on disk


_CODE: list[str] = []  # the checks' source digest, computed once


def _code_digest() -> str:
    """What the checks' rules are: a digest of their source (this file, data/checks.py and the json
    parser's gn_detect/io.py); "" when the source cannot be read (then no record is used)."""
    if not _CODE:
        h = hashlib.blake2b(digest_size=8)
        try:
            for f in (checks.__file__, __file__, _io.__file__):
                h.update(Path(f).read_bytes())
            _CODE.append(h.hexdigest())
        except (OSError, TypeError):  # no source file (a frozen or zipped install)
            _CODE.append("")
    return _CODE[0]


def _record_path(digest: str, classes: Classes) -> Path | None:
    """Where the record of this content and selection is (None: records are off, see _code_digest)."""
    code = _code_digest()
    if not code:
        return None
    key = hashlib.blake2b(json.dumps([digest, classes, code]).encode(), digest_size=12).hexdigest()
    return cache_dir() / "checked" / f"{key}.npz"


def _skip_log(d: dict[str, Any]) -> SkipLog:
    log = SkipLog()
    if not set(d["counts"]) | set(d["examples"]) <= set(log.counts):
        raise ValueError(f"unknown skip reasons {sorted(set(d['counts']) - set(log.counts))}")
    for reason, n in d["counts"].items():
        log.counts[reason] = int(n)
    for reason, ex in d["examples"].items():
        log.examples[reason] = list(ex)
    return log


def _save(record: Path, jc: JsonChecks) -> None:
    """Write ``jc``'s record (atomically); an error only logs (the next start checks again)."""
    c = jc.checked
    position = {id(e): i for i, e in enumerate(jc.data["images"])}
    kept = np.asarray([position[id(e)] for e in c.images], dtype=np.int64)  # the json-only pass keeps entries as given
    head = {k: v for k, v in jc.data.items() if k != "annotations"}
    try:  # the json's own values: json.dumps, then parse_json, gives them back (NaN, big ints included)
        text = json.dumps({"head": head, "categories": c.categories, "other": jc.other, "listed": jc.listed,
                           "digest": jc.digest, "skips": _log_dict(c.skips),
                           "annotation_skips": _log_dict(c.annotation_skips)}, separators=(",", ":"))
        arrays = {"box_counts": c.box_counts, "boxes": c.boxes, "cat_ids": c.cat_ids, "kept": kept,
                  **{f"ann_{k}": getattr(c.annotations, k) for k in AnnotationColumns.FIELDS},
                  "meta": np.frombuffer(text.encode(), dtype=np.uint8)}
        with atomic_open(record, binary=True) as f:
            np.savez(f, **arrays)
        _prune(record.parent)
    except (OSError, ValueError, TypeError, RecursionError) as e:  # RecursionError: a json nested ~1,000 deep
        logger.info("annotation check record not written (%s); the next start checks %s again", e, jc.path)


def _log_dict(log: SkipLog) -> dict[str, Any]:
    return {"counts": {k: v for k, v in log.counts.items() if v}, "examples": {k: v for k, v in log.examples.items() if v}}


def _load(record: Path, path: Path, key: FileKey, classes: Classes, digest: str) -> JsonChecks | None:
    """The record's JsonChecks, None when there is none or it cannot be read as one."""
    try:
        with np.load(record, allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        meta = parse_json(arrays.pop("meta").tobytes())
        if meta["digest"] != digest:
            return None
        head, images = meta["head"], meta["head"]["images"]
        checked = CheckedCoco(meta["categories"], [images[i] for i in arrays["kept"].tolist()], arrays["box_counts"],
                              arrays["boxes"], arrays["cat_ids"],
                              AnnotationColumns(*(arrays[f"ann_{k}"] for k in AnnotationColumns.FIELDS)),
                              _skip_log(meta["skips"]), _skip_log(meta["annotation_skips"]))
        if len(checked.box_counts) != len(checked.images) or int(checked.box_counts.sum()) != len(checked.boxes) \
                or checked.boxes.shape[1:] != (4,) or checked.cat_ids.shape != (len(checked.boxes),):
            raise ValueError("arrays of unequal lengths")
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError, IndexError, AttributeError, RecursionError,
            zipfile.BadZipFile) as e:
        logger.info("annotation check record %s not used (%s); checking %s again", record, e, path)
        return None
    try:
        os.utime(record)  # recently used: kept by _prune
    except OSError:
        pass
    return JsonChecks(path, key, classes, head, checked, meta["other"], int(meta["listed"]), digest)


def _prune(folder: Path) -> None:
    """Keep the KEEP_RECORDS most recently used records; remove what a killed writer left (a temp
    file over an hour old). Another process pruning at the same time is no error."""
    seen = []
    for p in folder.iterdir():
        try:
            seen.append((p.stat().st_mtime, p))
        except OSError:  # removed meanwhile
            continue
    records = sorted(((t, p) for t, p in seen if p.suffix == ".npz"), reverse=True)
    stale = [p for t, p in seen if p.name.endswith(".tmp") and t < time.time() - 3600]
    for p in [p for _, p in records[KEEP_RECORDS:]] + stale:
        p.unlink(missing_ok=True)


# ----------------------------------------------------------------------------- the hand-over


class ParsedFiles:
    """Annotation files read and checked once, handed, explicitly, to their one reader: the
    pre-flight of a single run reads every file the run reads and passes this object to the run,
    whose dataset builds take each file's :class:`JsonChecks` instead of reading it again. Keyed by
    :func:`file_key` and ``data.classes``: a file changed in between is read again. Taken once, so
    the reader owns (and may change) what it gets."""

    def __init__(self) -> None:
        self._files: dict[tuple[FileKey, Classes], JsonChecks] = {}

    def __len__(self) -> int:
        return len(self._files)

    def put(self, jc: JsonChecks) -> None:
        self._files[(jc.key, jc.classes)] = jc  # the file as it was read: a later change is a new key

    def take(self, path: str | Path, classes: Sequence[str] | None) -> JsonChecks | None:
        """What was read of ``path`` with ``classes`` if it is still the file that was read (else
        None, and stale entries of that file are dropped)."""
        key = file_key(path)
        if key is None:
            return None
        for stale in [k for k in self._files if k[0][0] == key[0] and k[0] != key]:
            del self._files[stale]
        return self._files.pop((key, classes_key(classes)), None)

    def clear(self) -> None:
        self._files.clear()
