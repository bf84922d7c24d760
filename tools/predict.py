#!/usr/bin/env python
"""Detect objects in an image or a folder of images with a trained (or exported) model, at the
per-class thresholds tuned in the run's report.json or one given score_thresh; writes
detections.json (COCO results), images.json (images and categories) and drawn/<image>.

    python tools/predict.py checkpoint=outputs/<run>/checkpoints/model_final.pth input=photos/ output=preds/
    python tools/predict.py checkpoint=outputs/<run>/export/model_folded.pt input=a.jpg output=preds/ score_thresh=0.4
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from gn_detect.deploy.entry_points import predict_main  # noqa: E402

if __name__ == "__main__":
    predict_main()
