"""One process per run folder: ``<run>/.lock``, held with ``fcntl.flock`` for the life of the run.

The first process to lock the file owns the folder and writes ``{"pid", "host"}`` into it; a
second process on the same folder (the same ``hydra.run.dir``) stops at once with a one-line
:class:`RunFolderInUse` naming the owner. The operating system drops the lock when its owner
dies, however it dies, so a lock left by a dead process is simply taken over (with a warning
naming the dead pid). Only rank 0 of a torchrun job locks: the other ranks share its folder.
``flock`` needs a local file system or NFS v4; where ``fcntl`` does not exist (Windows) the
folder is not locked, and that is logged.

:func:`pid_alive` tells whether a pid exists on this host (the sweep report keeps its own
host-aware check, gn_detect/sweeps/collect.py, since sweeps does not import engine).
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

try:
    import fcntl  # POSIX only
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "RUN_FILES", "RunFolderInUse", "RunLock", "links_in_run_folder", "no_follow", "pid_alive"]

LOCK_NAME = ".lock"


# What a run writes in its folder (a sweep folder's runs are its subfolders): none may be a symlink
RUN_FILES = (LOCK_NAME, "status.json", "config.yaml", "env.json", "metrics.jsonl", "data_skipped.json", "launch.log",
             "checkpoints", "tb", ".hydra", "multirun.yaml")


def no_follow(path: str, flags: int) -> int:
    """An ``opener`` for ``open``: the file is never opened through a symlink (ELOOP instead)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def links_in_run_folder(folder: str | os.PathLike, sweep: bool = False) -> list[Path]:
    """The symlinks among the files a run writes in ``folder`` (with ``sweep``: in the folder and each
    run subfolder; checkpoints/ included): writing through one would write outside the folder."""
    root = Path(folder)
    folders = [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())] if sweep and root.is_dir() \
        else [root]
    found = []
    for d in folders:
        found += [d / n for n in RUN_FILES if (d / n).is_symlink()]
        ckpts = d / "checkpoints"
        if ckpts.is_dir() and not ckpts.is_symlink():
            found += [p for p in ckpts.iterdir() if p.is_symlink()]
    return found


class RunFolderInUse(RuntimeError):
    """Another live process owns the run folder."""


def pid_alive(pid: Any) -> bool:
    """Whether process ``pid`` exists on this host (one owned by another user counts)."""
    try:
        pid = int(pid)
    except (TypeError, ValueError):
        return False
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _read_owner(f: Any) -> dict[str, Any]:
    f.seek(0)
    try:
        owner = json.loads(f.read() or "{}")
    except ValueError:
        return {}
    return owner if isinstance(owner, dict) else {}


class RunLock:
    """The lock of one run folder; :meth:`acquire` it, :meth:`release` it when the run ends.

    ``previous_owner`` is what the file said before this process took it over (``{}`` for a
    folder that was released normally): the pid of a process that died holding the folder.
    """

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.path = Path(run_dir) / LOCK_NAME
        self.previous_owner: dict[str, Any] = {}
        self._file: Any = None

    @property
    def held(self) -> bool:
        return self._file is not None

    def acquire(self) -> "RunLock":
        """Takes the folder or raises :class:`RunFolderInUse` naming the owner's pid and host."""
        if fcntl is None:
            log.warning("no fcntl on this platform: %s is not locked against a second process", self.path.parent)
            return self
        self.path.parent.mkdir(parents=True, exist_ok=True)
        f = open(self.path, "a+", encoding="utf-8", opener=no_follow)  # noqa: SIM115 - held open for the whole run
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = _read_owner(f)
            f.close()
            raise RunFolderInUse(
                f"run folder {self.path.parent} is in use by pid {owner.get('pid', '?')} on "
                f"{owner.get('host', '?')}; wait for that run to end (or stop it), or give another run folder "
                "(hydra.run.dir=...)"
            ) from None
        self.previous_owner = _read_owner(f)
        if self.previous_owner.get("pid") not in (None, os.getpid()):
            log.warning("run folder %s: took over the lock of pid %s on %s, which is no longer running",
                        self.path.parent, self.previous_owner.get("pid"), self.previous_owner.get("host", "?"))
        f.seek(0)
        f.truncate()
        f.write(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))
        f.flush()
        self._file = f
        return self

    def release(self) -> None:
        """Empties the file (a lock that still names a pid was left by a process that died) and
        unlocks it. Safe to call twice."""
        if self._file is not None:
            self._file.seek(0)
            self._file.truncate()
            self._file.flush()
            fcntl.flock(self._file.fileno(), fcntl.LOCK_UN)
            self._file.close()
            self._file = None
