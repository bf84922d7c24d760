#!/usr/bin/env python
"""Train (and evaluate) a RetinaNet from the Hydra config tree in configs/.

    python tools/train.py                                  # tiny model on synthetic shapes, CPU
    python tools/train.py model=retinanet_r18_fpn data=coco128 norm=gn schedule=short
    python tools/train.py -m norm=bn,gn data.ims_per_device=2,4 seed=0,1   # a resumable sweep
    torchrun --nproc_per_node=2 tools/train.py norm=syncbn                 # DDP (gloo on CPU)
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from gn_detect.engine.launch import main  # noqa: E402

if __name__ == "__main__":
    main()
