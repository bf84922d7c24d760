#!/usr/bin/env python
"""Evaluate a saved gn-detect checkpoint: COCO AP, tuned-threshold label/box precision and
recall, report.json/report.md/per_class.csv and figures.

    python tools/evaluate.py checkpoint=outputs/<run>/checkpoints/model_final.pth
    python tools/evaluate.py checkpoint=... data=coco128 eval.tune=same
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from gn_detect.engine.launch import evaluate_main  # noqa: E402

if __name__ == "__main__":
    evaluate_main()
