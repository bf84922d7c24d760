"""A run folder's ``status.json``: read, write, whether its owner is alive, whether it finished.

``{"state": "running"|"done"|"failed"|"interrupted", "error": str|null, "iteration": completed
iterations, "pid": int, "host": str, "updated": time}``; "interrupted": stopped by a signal after
saving last.pth (rerunning resumes it).
"""
from __future__ import annotations

import json
import os
import socket
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal

from gn_detect.io import write_json_atomic

from .layout import STATUS

RunState = Literal["running", "done", "failed", "interrupted"]
STATES = ("running", "done", "failed", "interrupted")


def load_status(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The status of ``run_dir``; None when there is none (never started); raises OSError or
    ValueError when it cannot be read as a JSON object (the sweep report says which)."""
    try:
        text = (Path(run_dir) / STATUS).read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    status = json.loads(text)
    if not isinstance(status, dict):
        raise ValueError(f"{STATUS} holds a {type(status).__name__}, not an object")
    return status


def read_status(run_dir: str | os.PathLike) -> dict[str, Any]:
    """The status of ``run_dir``; {} when there is none or it cannot be read."""
    try:
        return load_status(run_dir) or {}
    except (OSError, ValueError, RecursionError):  # RecursionError: JSON nested thousands deep
        return {}


def write_status(run_dir: str | os.PathLike, state: RunState, **info: Any) -> Path:
    """Update ``run_dir/status.json``: ``state``, ``error`` (None unless given), ``updated``.

    Merges into the previous content so fields written at start (start time, pid, host) stay;
    ``error`` is reset on each write so a resumed run does not carry its old failure. Call
    it from the main process (a failing non-zero rank may call it too: last writer wins).
    """
    if state not in STATES:
        raise ValueError(f"status state must be one of {STATES}, got {state!r}")
    status = read_status(run_dir)
    status.update(info)
    status["state"] = state
    status["error"] = info.get("error")
    status["updated"] = datetime.now(timezone.utc).isoformat(timespec="seconds")
    return write_json_atomic(Path(run_dir) / STATUS, status)


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
    except OverflowError:
        return False
    return True


def owner_gone(status: dict[str, Any]) -> bool:
    """Whether the process a status (or lock record) names by ``pid`` and ``host`` no longer exists;
    False when it names none or another host (its liveness cannot be told from here)."""
    if status.get("host") != socket.gethostname() or status.get("pid") in (None, "", True, False):
        return False
    try:
        if int(status["pid"]) <= 0:
            return False
    except (TypeError, ValueError, OverflowError):  # OverflowError: a pid of Infinity
        return False
    return not pid_alive(status["pid"])


def finished(run_dir: str | os.PathLike) -> bool:
    """Whether ``run_dir`` holds a run that ended 'done' (a sweep skips it)."""
    return read_status(run_dir).get("state") == "done"
