"""pycocotools helpers shared by data and evaluation (no torch import)."""
from __future__ import annotations

import contextlib
import io
from typing import Any

from pycocotools.coco import COCO


def coco_from_dict(dataset: dict[str, Any]) -> COCO:
    """A COCO object over an in-memory dataset dict, without pycocotools' stdout chatter."""
    coco = COCO()
    coco.dataset = dataset
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco
