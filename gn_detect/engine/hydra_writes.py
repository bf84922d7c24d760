"""Hydra's own writes (a sweep's multirun.yaml, each job's .hydra/*.yaml) failing on a full disk
end in one line and exit status 1, like the run's own writes (gn_detect/io.py: DiskFullError),
not in Hydra's printed stack.

Hydra turns every ``Exception`` escaping the app into its printed stack (``run_and_report``).
While :func:`disk_full_in_one_line` is active, a disk-full error on its way there is printed as
one line naming the file Hydra was writing and the process exits 1; every other exception goes
on to Hydra as before, and ``HYDRA_FULL_ERROR=1`` keeps the full trace.
"""
from __future__ import annotations

import contextlib
import io
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from types import TracebackType
from typing import Any

from hydra._internal import utils as hydra_utils

from gn_detect.io import is_disk_full

__all__ = ["disk_full_in_one_line", "file_being_written"]


def file_being_written(tb: TracebackType | None) -> tuple[str, str] | None:
    """(the file, the module writing it) of the innermost frame of ``tb`` that holds one: an open
    file object among its locals, else its ``output_dir`` / ``filename`` (Hydra's ``_save_config``)."""
    frames = []
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        local, module = frame.f_locals, str(frame.f_globals.get("__name__", ""))
        for value in local.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name, module
        if isinstance(local.get("filename"), str) and isinstance(local.get("output_dir"), (str, Path)):
            return os.fspath(Path(local["output_dir"]) / local["filename"]), module
    return None


@contextlib.contextmanager
def disk_full_in_one_line() -> Iterator[None]:
    """Within: Hydra's writes on a full disk end as ``gn-detect: no space left ... Fix: ...``, exit 1."""
    original: Callable[[Callable[[], Any]], Any] = hydra_utils.run_and_report

    def run_and_report(func: Callable[[], Any]) -> Any:
        def guarded() -> Any:
            try:
                return func()
            except Exception as exc:
                if os.environ.get("HYDRA_FULL_ERROR") == "1" or not is_disk_full(exc):
                    raise
                found = file_being_written(exc.__traceback__)
                if found is None:
                    what = "while Hydra wrote its record of the job (.hydra/ or multirun.yaml)"
                else:
                    writer = "Hydra wrote" if found[1].startswith(("hydra", "omegaconf")) else "writing"
                    what = f"while {writer} {found[0]}"
                print(f"gn-detect: no space left on device (ENOSPC) {what}; the runs' own files "
                      "already written are kept. Fix: free space on that disk or put the run or sweep folder on another "
                      "one (hydra.run.dir=... or hydra.sweep.dir=...)", file=sys.stderr, flush=True)
                raise SystemExit(1) from None
        return original(guarded)

    hydra_utils.run_and_report = run_and_report
    try:
        yield
    finally:
        hydra_utils.run_and_report = original
