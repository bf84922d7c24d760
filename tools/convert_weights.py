#!/usr/bin/env python
"""Convert a pretrained backbone file (torchvision/timm .pth or .safetensors, Detectron/Caffe2
.pkl, detectron2 .pkl/.pth) to torchvision's ResNet layout plus the input conventions it needs:
DST = torch.save({"state_dict", "conventions"}), loadable with weights_only=True and by
model.backbone.weights; or a whole-detector file (torchvision retinanet_resnet50_fpn[_v2]) to
gn-detect's names with its settings and class rows, loadable by model.weights. The source is
told from the content. Exit 0, or 2 with one line (also
for a DST that cannot be written), or 1 with one line when the write fails anyway.

    python tools/convert_weights.py R-50.pkl R-50.converted.pth
    python tools/convert_weights.py resnet50.pth out.pth --source torchvision --norm affine
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # runnable without installing

from gn_detect.checkpoint import SOURCES  # noqa: E402
from gn_detect.checkpoint.convert_weights import NORM_CHOICES, convert_weights  # noqa: E402
from gn_detect.config.errors import ConfigError, check_output_path, one_line  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("src")
    parser.add_argument("dst")
    parser.add_argument("--source", default="auto", choices=("auto", *SOURCES))
    parser.add_argument("--norm", default="auto", choices=("auto", *NORM_CHOICES),
                        help="what the file's norms are (auto: from the content)")
    parser.add_argument("--num-groups", type=int, default=32, help="GN groups recorded for a GN file (not stored in files)")
    args = parser.parse_args(argv)
    try:
        check_output_path("dst", args.dst, file=True)  # before the source is read
        out = convert_weights(args.src, args.dst, source=args.source, norm=args.norm, num_groups=args.num_groups)
    except ConfigError as e:
        print(f"convert_weights: {str(e).removeprefix(f'{e.key}: ')}", file=sys.stderr)
        return 2
    except OSError as e:  # the write failed after the check (disk full, a folder gone)
        print(f"convert_weights: writing {args.dst} failed: {one_line(e)}", file=sys.stderr)
        return 1
    for src, dst in out["mapped"]:
        print(f"mapped     {src} -> {dst}")
    for key in out["ignored"]:
        print(f"ignored    {key}")
    for key in out["converted"]:
        print(f"converted  {key}: BN statistics folded into weight/bias (eps 1e-5)")
    if "source" in out:
        print(f"detector   {out['source']}: loadable as model.weights={args.dst}")
    print(f"conventions {out['conventions']}")
    print(f"wrote {args.dst}: {len(out['mapped'])} mapped, {len(out['ignored'])} ignored, "
          f"{len(out['converted'])} converted")
    return 0


if __name__ == "__main__":
    sys.exit(main())
