#!/usr/bin/env python
"""Convert Pascal VOC or YOLO annotations to a COCO instances json (see docs/data.md).

  convert_dataset.py voc  --ann-dir VOC2012/Annotations [--image-set ImageSets/Main/train.txt] --out train.json
  convert_dataset.py yolo --images data/images/train [--labels data/labels/train] --names classes.txt --out train.json
  ... [--keep WBC RBC]   only these classes; the other classes' boxes are dropped and counted
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
from collections.abc import Sequence
from pathlib import Path

from gn_detect.data.convert_dataset import (ConversionError, read_names, read_text, select_classes, voc_to_coco, write_coco,
                                            yolo_to_coco)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="format", required=True)
    v = sub.add_parser("voc", help="Pascal VOC xml -> COCO json")
    v.add_argument("--ann-dir", required=True, help="folder of VOC xml files")
    v.add_argument("--image-set", help="optional ImageSets list (one id per line) restricting the xml files")
    v.add_argument("--images", help="image folder, only needed for xml files without <size>")
    v.add_argument("--names", help="class names file (one per line) fixing category order; default sorted")
    v.add_argument("--difficult", choices=("keep", "crowd", "skip"), default="keep")
    y = sub.add_parser("yolo", help="YOLO txt -> COCO json")
    y.add_argument("--images", required=True, help="image folder")
    y.add_argument("--labels", help="label folder (default: images path with 'images' -> 'labels')")
    y.add_argument("--names", required=True, help="classes.txt / obj.names, one class per line")
    for s in (v, y):
        s.add_argument("--out", required=True, help="output COCO json")
        s.add_argument("--keep", nargs="+", metavar="NAME",
                       help="only these classes (ids 1..k in this order); the others' boxes are dropped, counted")
    args = p.parse_args(argv)

    try:
        if args.format == "voc":
            ann_dir = Path(args.ann_dir)
            if args.image_set:
                ids = [ln.split()[0] for ln in read_text(args.image_set, "--image-set file").splitlines() if ln.strip()]
                files = [ann_dir / f"{i}.xml" for i in ids]
            else:
                files = sorted(ann_dir.glob("*.xml"))
            names = read_names(args.names) if args.names else None
            data = voc_to_coco(files, class_names=names, image_dir=args.images, difficult=args.difficult)
        else:
            data = yolo_to_coco(args.images, args.labels, class_names=args.names)
        data = select_classes(data, args.keep)
    except ConversionError as e:
        print(f"gn-detect: {e}", file=sys.stderr)
        return 2
    try:
        out = write_coco(data, args.out)
    except OSError as e:  # a full disk, a read-only or missing folder: one line, nothing half-written
        print(f"gn-detect: cannot write {args.out}: {e.strerror or e}; free space or give another --out",
              file=sys.stderr)
        return 1
    # prove the result loads the way training and evaluation will read it
    from pycocotools.coco import COCO

    with contextlib.redirect_stdout(io.StringIO()):
        COCO(str(out))
    dropped = ", ".join(f"{n} {reason}" for reason, n in data["info"]["dropped"].items()) or "nothing"
    print(f"{out}: {len(data['images'])} images, {len(data['annotations'])} annotations, "
          f"{len(data['categories'])} categories; dropped or clipped: {dropped}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
