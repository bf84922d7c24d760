"""Symlinks a run must never write through: the files a run writes in its folder, checked at start
(``links_in_run_folder``, refused by the pre-flight), and ``no_follow``, an ``open`` opener that
refuses a link (ELOOP) for the files a run keeps open."""
from __future__ import annotations

import os
from pathlib import Path

from .layout import CHECKPOINTS, CONFIG, ENV, HYDRA, LAUNCH_LOG, LOCK, METRICS, SKIPPED, STATUS, TB, WEIGHTS_LOADED

# What a run writes in its folder (a sweep folder's runs are its subfolders): none may be a symlink
RUN_FILES = (LOCK, STATUS, CONFIG, ENV, METRICS, SKIPPED, WEIGHTS_LOADED, LAUNCH_LOG, CHECKPOINTS, TB, HYDRA,
             "multirun.yaml")


def no_follow(path: str, flags: int) -> int:
    """An ``opener`` for ``open``: the file is never opened through a symlink (ELOOP instead)."""
    return os.open(path, flags | getattr(os, "O_NOFOLLOW", 0))


def links_in_run_folder(folder: str | os.PathLike, sweep: bool = False) -> list[Path]:
    """The symlinks among the files a run writes in ``folder`` (with ``sweep``: in the folder and each
    run subfolder; the files in checkpoints/ and .hydra/ included): writing through one would write
    outside the folder."""
    root = Path(folder)
    folders = [root, *(p for p in root.iterdir() if p.is_dir() and not p.is_symlink())] if sweep and root.is_dir() \
        else [root]
    found = []
    for d in folders:
        found += [d / n for n in RUN_FILES if (d / n).is_symlink()]
        for sub in (d / CHECKPOINTS, d / HYDRA):  # files written there by name (Hydra opens .hydra/*.yaml for writing)
            if sub.is_dir() and not sub.is_symlink():
                found += [p for p in sub.iterdir() if p.is_symlink()]
    return found
