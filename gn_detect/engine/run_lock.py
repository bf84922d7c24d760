"""One process per run folder: ``<run>/.lock``, held with ``fcntl.flock`` for the life of the run.

The first process to lock the file owns the folder and writes ``{"pid", "host"}`` into it; a
second process on the same folder (the same ``hydra.run.dir``) stops at once with a one-line
:class:`RunFolderInUse` naming the owner. The operating system drops the lock when its owner
dies, however it dies, so a lock left by a dead process is simply taken over (with a warning
naming the dead pid). Only rank 0 of a torchrun job locks: the other ranks share its folder.
``flock`` needs a local file system or NFS v4; where ``fcntl`` does not exist (Windows) the
folder is not locked, and that is logged.

Whether a process named in a status or lock is alive: gn_detect/runs/status.py.
"""
from __future__ import annotations

import json
import logging
import os
import socket
from pathlib import Path
from typing import Any

from gn_detect.runs import RunFolder
from gn_detect.runs.links import no_follow

try:
    import fcntl  # POSIX only
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

log = logging.getLogger(__name__)

__all__ = ["RunFolderInUse", "RunLock"]


class RunFolderInUse(RuntimeError):
    """Another live process owns the run folder."""


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
        self.path = RunFolder(run_dir).lock
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
