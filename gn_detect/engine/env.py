"""What a run ran on, for run_dir/env.json (so sweeps can tell results apart)."""

from __future__ import annotations

import os
import platform
import socket
import subprocess
import sys
from pathlib import Path
from typing import Any

import torch
import torchvision

from gn_detect.engine import dist as gdist

__all__ = ["collect_env"]

# The repository that holds this package (gn_detect/engine/env.py -> repo root).
_REPO_ROOT = Path(__file__).resolve().parents[2]


def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(
            ["git", "-C", str(_REPO_ROOT), *args],
            capture_output=True, text=True, timeout=5, check=True,
        )
    except (OSError, subprocess.SubprocessError):  # no git, not a repo, no commits yet, hung
        return None
    return out.stdout.strip()


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def collect_env() -> dict[str, Any]:
    """JSON-serializable description of code, libraries and hardware of this run."""
    commit = _git("rev-parse", "HEAD")
    # Tracked-file changes only: untracked scratch files do not change what ran.
    porcelain = _git("status", "--porcelain", "--untracked-files=no") if commit else None
    cuda = torch.cuda.is_available()
    return {
        "git_commit": commit or "unknown",
        "git_dirty": None if porcelain is None else bool(porcelain),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "torchvision": torchvision.__version__,
        "cuda": torch.version.cuda if cuda else None,
        "cudnn": torch.backends.cudnn.version() if cuda else None,
        "device": torch.cuda.get_device_name() if cuda else _cpu_model(),
        "device_type": "cuda" if cuda else "cpu",
        "num_gpus": torch.cuda.device_count() if cuda else 0,
        "num_threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "world_size": gdist.get_world_size(),
        "hostname": socket.gethostname(),
        "platform": platform.platform(),
    }

