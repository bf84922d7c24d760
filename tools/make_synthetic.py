#!/usr/bin/env python
"""Generate the synthetic 'shapes' COCO-format dataset (idempotent; see docs/data.md)."""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

from gn_detect.data.synthetic import SHAPE_CLASSES, ensure_shapes_dataset


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--out", required=True, help="dataset folder (created; replaced if made with other params)")
    p.add_argument("--num-train", type=int, default=300)
    p.add_argument("--num-val", type=int, default=100)
    p.add_argument("--image-size", type=int, default=256, help="long side in pixels")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-classes", type=int, default=5, choices=range(1, len(SHAPE_CLASSES) + 1),
                   metavar=f"1..{len(SHAPE_CLASSES)}")
    p.add_argument("--max-objects", type=int, default=6)
    p.add_argument("--format", dest="image_format", choices=("jpg", "png"), default="jpg")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    root = ensure_shapes_dataset(args.out, num_train=args.num_train, num_val=args.num_val,
                                 image_size=args.image_size, seed=args.seed, num_classes=args.num_classes,
                                 image_format=args.image_format, max_objects=args.max_objects)
    print(root)
    return 0


if __name__ == "__main__":
    sys.exit(main())
