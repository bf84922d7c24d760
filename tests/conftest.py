"""Shared test fixtures: where the shared real data lives, and small-thread torch."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
# image verification records go to a cache of the test session, never to the user's ~/.cache
# (subprocesses inherit it; tests/data/conftest.py gives each data test its own)
if "GN_DETECT_CACHE" not in os.environ:
    import tempfile

    os.environ["GN_DETECT_CACHE"] = tempfile.mkdtemp(prefix="gn_detect_test_cache_")


def shared_data_dir() -> Path:
    return Path(os.environ.get("GN_DETECT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    root = shared_data_dir()
    if not (root / "coco128").is_dir():
        pytest.skip(f"shared data not found at {root} (set GN_DETECT_SHARED_DATA)")
    return root
