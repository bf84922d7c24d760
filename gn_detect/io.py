"""Strict JSON out: ``to_jsonable`` and the one atomic writer every package uses (``atomic_open``
for text, ``write_json_atomic`` for JSON); :class:`DiskFullError`, what every atomic writer
(these, checkpoints) raises on ENOSPC; and ``parse_json``, the fast reader of large jsons.

Lives at the package root so that data, evaluation, sweeps and engine share it without data
or evaluation depending on engine. No torch import: tensors and NumPy values are recognised
by their ``tolist``/``item`` methods.
"""

from __future__ import annotations

import contextlib
import errno
import gc
import hashlib
import json
import math
import os
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, TextIO

__all__ = ["DiskFullError", "atomic_open", "file_fingerprint", "is_disk_full", "parse_json", "paused_gc",
           "release_frozen", "content_digest", "fingerprint_bytes", "stat_key", "to_jsonable", "unwritable_file", "unwritable_folder",
           "write_json_atomic", "write_text_atomic"]

try:  # C parser: a 448 MB COCO train json in about half of json's time
    import orjson as _orjson
except ImportError:  # pragma: no cover - an install without it reads the same values, slower
    _orjson = None


_DIGITS = bytes(48 if 48 <= b <= 57 else 32 for b in range(256))  # digits to b"0", all else to b" "


_PAUSED = [0]  # paused_gc's nesting depth: only the outermost one acts


@contextlib.contextmanager
def paused_gc() -> Iterator[None]:
    """The cyclic garbage collector off within, and what is alive at the end moved out of its reach
    (``gc.freeze``) before it is on again: building millions of small objects (a COCO json's
    dicts) otherwise triggers full collections over all of them, which cost more than the
    building, and so would every later step that allocates (config merges, model build) while
    they live; forked loader workers then do not touch their pages either. Frozen objects are
    still freed by reference counts; a cycle among them (garbage of the time, or later) waits for
    :func:`release_frozen`, which every training run calls when it ends."""
    _PAUSED[0] += 1
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        _PAUSED[0] -= 1
        if not _PAUSED[0]:
            gc.freeze()
            if was:
                gc.enable()


def release_frozen() -> None:
    """What :func:`paused_gc` froze back under the collector (its next full collection frees
    what has become cyclic garbage)."""
    gc.unfreeze()


def _long_digit_run(raw: bytes, block: int = 1 << 24) -> bool:
    """Whether ``raw`` holds 19 digits in a row (read in blocks: no copy of a whole 448 MB json)."""
    return any(b"0" * 19 in raw[max(i - 18, 0):i + block].translate(_DIGITS) for i in range(0, len(raw), block))


def parse_json(raw: bytes | str) -> Any:
    """``json.loads(raw)``'s value, with orjson's speed when it is installed. What orjson reads
    differently or refuses goes to ``json.loads`` (a run of 19+ digits: orjson reads some as a
    float where json reads an int or fails; syntax errors, NaN, ...), so the value or the exception
    (and its message) is always json's."""
    with paused_gc():
        if _orjson is not None and isinstance(raw, bytes) and not _long_digit_run(raw):
            try:
                return _orjson.loads(raw)
            except _orjson.JSONDecodeError:
                pass
        return json.loads(raw)


class DiskFullError(OSError):
    """No space left on the device while writing a run file; the message names the path and says
    that the previous file, if any, is kept (writes are atomic)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.message = (f"no space left on device (ENOSPC) while writing {path}; the previous {Path(path).name}, "
                        "if any, is kept. Fix: free space on that disk or put the run folder on another one "
                        "(hydra.run.dir=...)")
        super().__init__(errno.ENOSPC, self.message, os.fspath(path))

    def __str__(self) -> str:
        return self.message


_FINGERPRINTS: dict[tuple[str, int, int, int, int], str] = {}  # (path, inode, size, mtime_ns, ctime_ns) -> BLAKE2b


def stat_key(path: str | os.PathLike, st: os.stat_result) -> tuple[str, int, int, int, int]:
    """What tells a file's versions apart without reading it: (resolved path, inode, size,
    mtime_ns, ctime_ns) of ``st``, the file's stat."""
    return os.path.realpath(path), st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns


def _hasher() -> Any:
    return hashlib.blake2b(digest_size=16)  # the content digest of every fingerprint: BLAKE2b-128


def content_digest(raw: bytes) -> str:
    """The digest :func:`file_fingerprint` gives a file holding ``raw``."""
    h = _hasher()
    h.update(raw)
    return h.hexdigest()


def fingerprint_bytes(path: str | os.PathLike, st: os.stat_result, raw: bytes) -> str:
    """:func:`content_digest` of ``raw``, the bytes of ``path`` as ``st`` (its stat then) describes,
    remembered so that :func:`file_fingerprint` does not read and hash the file again."""
    _FINGERPRINTS[stat_key(path, st)] = digest = content_digest(raw)
    return digest


def file_fingerprint(path: str | os.PathLike) -> dict[str, Any]:
    """What identifies a data file's content: ``{"size", "mtime_ns", "blake2b"}`` (BLAKE2b-128 of the
    bytes, read in 1 MiB blocks: about a second for COCO's 448 MB train json; not again in this
    process while the file's inode, size, mtime and ctime are those it was hashed at)."""
    with open(path, "rb") as f:
        st = os.fstat(f.fileno())
        key = stat_key(path, st)
        if key not in _FINGERPRINTS:
            h = _hasher()
            while block := f.read(1 << 20):
                h.update(block)
            _FINGERPRINTS[key] = h.hexdigest()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "blake2b": _FINGERPRINTS[key]}


def is_disk_full(exc: BaseException) -> bool:
    """Whether ``exc`` or an exception in its chain is ENOSPC (torch.save reports it as a
    RuntimeError whose cause says "No space left on device")."""
    seen: set[int] = set()
    e: BaseException | None = exc
    while e is not None and id(e) not in seen:
        seen.add(id(e))
        if (isinstance(e, OSError) and e.errno == errno.ENOSPC) or "No space left on device" in str(e):
            return True
        e = e.__cause__ or e.__context__
    return False


def _absolute(path: str | os.PathLike, base: str | os.PathLike | None) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else Path(base if base is not None else Path.cwd()) / p


def unwritable_folder(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str | None:
    """Why the folder ``path`` (relative: to ``base``, default the working folder) cannot be made
    and written, as a fragment such as ``/x is a file, not a folder``; None when it can. Walks up
    to the first existing ancestor, which must be a folder where a file can be created: tried
    (and deleted), since root ignores permission bits but not a read-only mount or /proc."""
    path = _absolute(path, base)
    for p in (path, *path.parents):
        if not (p.exists() or p.is_symlink()):
            continue
        if not p.is_dir():
            return f"{p} is a file, not a folder" if p.exists() else f"{p} is a broken link"
        try:
            fd, probe = tempfile.mkstemp(prefix=".gn-detect-write-check.", dir=p)
        except OSError as e:
            return f"{p} is not writable ({e.strerror or type(e).__name__})"
        os.close(fd)
        os.unlink(probe)
        return None
    return None


def unwritable_file(path: str | os.PathLike, base: str | os.PathLike | None = None) -> str | None:
    """Why the file ``path`` cannot be written (it is a folder, or its folder cannot be made and
    written: :func:`unwritable_folder`); None when it can."""
    path = _absolute(path, base)
    if path.is_dir():
        return f"{path} is a folder, not a file"
    if path.exists() and not os.access(path, os.W_OK):
        return f"{path} is not writable"
    return unwritable_folder(path.parent)


def _numel(obj: Any) -> int:
    # torch tensors have numel(); NumPy arrays and scalars have an int .size
    numel = getattr(obj, "numel", None)
    return int(numel()) if callable(numel) else int(getattr(obj, "size", 1))


def to_jsonable(obj: Any) -> Any:
    """Tensors/NumPy values to Python numbers or lists, paths to str; non-finite floats to None.

    One-element tensors and arrays become a number. NaN/Infinity are not JSON (strict parsers
    such as ``jq`` reject them), so a diverged loss is written as null. Anything else
    unknown becomes its ``str``.
    """
    if isinstance(obj, Mapping):
        return {str(k): to_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (str, int, bool)) or obj is None:
        return obj
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    if callable(getattr(obj, "tolist", None)) and callable(getattr(obj, "item", None)):
        return to_jsonable(obj.item() if _numel(obj) == 1 else obj.tolist())
    return str(obj)


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, *, newline: str | None = None, binary: bool = False) -> Iterator[TextIO]:
    """A UTF-8 text file to write, which appears at ``path`` only when the block ends without an
    error (temp file in the same folder + fsync + ``os.replace``): readers never see half a file,
    and a killed or failing writer leaves the old file (or none) in place. ENOSPC becomes
    :class:`DiskFullError`. ``newline`` as for ``open`` (``""`` for the csv module); ``binary``: a
    bytes file (e.g. an image PIL saves)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with (os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8", newline=newline)) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp_name, path)
    except BaseException as exc:
        Path(tmp_name).unlink(missing_ok=True)
        if isinstance(exc, OSError) and not isinstance(exc, DiskFullError) and is_disk_full(exc):
            raise DiskFullError(path) from exc
        raise


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    """Write ``text`` (UTF-8) through :func:`atomic_open`. Returns ``path``."""
    with atomic_open(path) as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike, obj: Any, *, indent: int | None = 2) -> Path:
    """Write ``to_jsonable(obj)`` as strict JSON through :func:`atomic_open` (streamed, so a large
    annotation file is never held twice as text). ``indent=None`` writes one compact line.
    Returns ``path``."""
    with atomic_open(path) as f:
        json.dump(to_jsonable(obj), f, indent=indent, allow_nan=False)
        f.write("\n")
    return Path(path)
