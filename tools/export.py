#!/usr/bin/env python
"""Fold a trained checkpoint's norms into its convolutions and export it: <run>/export/ gets
model_folded.pt (load with gn_detect.deploy.load_folded), model.onnx (backbone + FPN + head up to
logits and box deltas) and export_check.json (PyTorch unfolded vs folded vs onnxruntime).

    python tools/export.py checkpoint=outputs/<run>/checkpoints/model_final.pth
    python tools/export.py checkpoint=... onnx=false per_level=keep out_dir=/tmp/export
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from gn_detect.deploy.entry_points import export_main  # noqa: E402

if __name__ == "__main__":
    export_main()
