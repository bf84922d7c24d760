#!/usr/bin/env python
"""Draw N images of a split with their boxes as the training loader gives them (resized and,
for the train split, randomly sized and flipped with the loader's seeded generator) and their
class names, one PNG per image in --out and a contact sheet, --out/contact_sheet.png.

    python tools/browse_dataset.py --out browse/ data=shapes
    python tools/browse_dataset.py --split val --num 16 --out browse_val/ data=coco128

Arguments after the options are the config overrides tools/train.py takes (Hydra), so the
data section, transforms included, is exactly a run's.
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

REPO = Path(__file__).resolve().parents[1]


def _fail(msg: str) -> int:
    print(f"gn-detect: {msg}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--split", choices=("train", "val"), default="train")
    p.add_argument("--num", type=int, default=8, help="images to draw (the first N of the split)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--seed", type=int, default=0, help="augmentation seed of the train split (the loader's)")
    p.add_argument("overrides", nargs="*", help="config overrides, as for tools/train.py (data=..., data.root=...)")
    args = p.parse_args(argv)
    if args.num < 1:
        return _fail(f"--num {args.num}: give at least 1")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        return _fail(f"--out {out} is a file; give a folder")

    from hydra import compose, initialize_config_dir
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException
    from PIL import Image

    import gn_detect.engine.launch  # noqa: F401  (registers the resolvers the config needs)
    from gn_detect.data import build_dataset
    from gn_detect.data.checks import DataError
    from gn_detect.deploy.draw import draw_detections

    try:
        with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
            cfg = compose(config_name="config", overrides=args.overrides)
        dataset = build_dataset(cfg.data, args.split)
    except (HydraException, OmegaConfBaseException) as e:
        return _fail(f"config: {str(e).splitlines()[0]}")
    except (DataError, OSError, ValueError) as e:
        return _fail(str(e).splitlines()[0])

    names = {c["id"]: str(c.get("name", c["id"])) for c in dataset.categories}
    n = min(args.num, len(dataset))
    paths = []
    for i in range(n):
        # the train loader indexes (image, seed): the same random size and flip a run would draw
        image, target = dataset[(i, args.seed + i)] if args.split == "train" else dataset[i]
        boxes = [{"bbox": [x1, y1, x2 - x1, y2 - y1], "category_id": dataset.label_to_cat_id[int(lab)]}
                 for (x1, y1, x2, y2), lab in zip(target["boxes"].tolist(), target["labels"].tolist())]
        pil = Image.fromarray(image.permute(1, 2, 0).numpy())
        paths.append(draw_detections(pil, boxes, names, dataset.label_to_cat_id,
                                     out / f"{i:03d}_{target['image_id']}.png"))
    cols = math.ceil(math.sqrt(n))
    tiles = [Image.open(q) for q in paths]
    cell = max(max(t.size) for t in tiles)
    sheet = Image.new("RGB", (cols * cell, math.ceil(n / cols) * cell), (255, 255, 255))
    for k, t in enumerate(tiles):
        t.thumbnail((cell, cell))
        sheet.paste(t, ((k % cols) * cell, (k // cols) * cell))
    sheet.save(out / "contact_sheet.png")
    print(f"{out}: {n} images of {dataset.name} ({args.split}, as the {'training' if args.split == 'train' else 'test'} "
          f"loader gives them) with {sum(len(dataset.annotations(i)[0]) for i in range(n))} boxes; contact_sheet.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
