#!/usr/bin/env python
"""torchvision's RetinaNet against the same weights loaded through ``model.weights``: do both give
the same detections?

Builds torchvision's ``retinanet_resnet50_fpn`` (v1, as its COCO_V1 weights run: FrozenBatchNorm2d
with eps 0) or ``retinanet_resnet50_fpn_v2`` (BatchNorm2d, eps 1e-5) with seeded random weights
(nothing downloaded; BN statistics taken from the images' own activations and perturbed, biases
and head weights perturbed so nothing is trivially zero and many boxes score above 0.05), saves its
state dict, loads that file through ``model.weights`` as tools/train.py does (the Hydra config of
``model=retinanet_r50_fpn norm=affine model.weights=FILE``, validated, the file's settings
resolved, ``build_model``), and runs both in eval mode on the first images of DIR resized to H x W
(torchvision's transform with min_size/max_size of that size, so it scales by 1). Each model is
fed by its own pipeline; every stage's largest difference is reported.

    python scripts/detector_parity.py --source torchvision_v1 --images ../shared/data/tiny_coco/val2017 \
        --size 512 640 --json parity_v1.json

Exit 0 when counts and labels are equal, boxes within 0.01 px and scores within 1e-4; else 1.
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gn_detect.engine.launch  # noqa: E402,F401  (the resolvers and schema the config tree needs)
from gn_detect.config.validate import validate_train_config  # noqa: E402
from gn_detect.modeling import build_model  # noqa: E402
from gn_detect.deploy.export_check import tensor_diff  # noqa: E402
from gn_detect.image_io import read_rgb  # noqa: E402

BOX_TOL, SCORE_TOL = 0.01, 1e-4
NUM_CLASSES = 91  # torchvision's COCO rows
SOURCES = ("torchvision_v1", "torchvision_v2")


def torchvision_model(source: str, size: tuple[int, int]) -> nn.Module:
    """torchvision's model as its COCO weights run, transform scaling an H x W image by 1."""
    from torchvision.models import resnet50
    from torchvision.models.detection import RetinaNet, retinanet_resnet50_fpn, retinanet_resnet50_fpn_v2
    from torchvision.models.detection._utils import overwrite_eps
    from torchvision.models.detection.backbone_utils import _resnet_fpn_extractor
    from torchvision.ops.feature_pyramid_network import LastLevelP6P7
    from torchvision.ops.misc import FrozenBatchNorm2d

    kw = {"min_size": min(size), "max_size": max(size)}
    if source == "torchvision_v2":
        return retinanet_resnet50_fpn_v2(weights=None, weights_backbone=None, **kw)
    # retinanet_resnet50_fpn(weights=COCO_V1) without the download: FrozenBN, then eps 0
    body = _resnet_fpn_extractor(resnet50(weights=None, norm_layer=FrozenBatchNorm2d), 3, returned_layers=[2, 3, 4],
                                 extra_blocks=LastLevelP6P7(256, 256))
    model = RetinaNet(body, NUM_CLASSES, **kw)
    overwrite_eps(model, 0.0)
    plain = {k for k in retinanet_resnet50_fpn(weights=None, weights_backbone=None).state_dict()
             if not k.endswith("num_batches_tracked")}
    assert set(model.state_dict()) == plain, "the FrozenBN build differs from retinanet_resnet50_fpn's keys"
    return model


@torch.no_grad()
def randomize(model: nn.Module, images: list[torch.Tensor], seed: int) -> None:
    """Seeded weights: every BN's statistics from its own input on ``images`` (then perturbed),
    BN affines, conv biases and the head perturbed (module docstring)."""
    g = torch.Generator().manual_seed(seed)

    def rand(shape: Any, lo: float, hi: float) -> torch.Tensor:
        return lo + (hi - lo) * torch.rand(shape, generator=g)

    norms = [m for m in model.backbone.body.modules() if hasattr(m, "running_var")]
    # a residual branch's last norm small (as in trained ResNets): a random ResNet whose branches add up
    # at full scale amplifies float rounding block after block
    last = {id(m) for n, m in model.backbone.body.named_modules() if n.endswith("bn3")}

    def calibrate(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        x = args[0].double()
        c = x.shape[1]
        module.running_mean.copy_(x.mean((0, 2, 3)) + 0.1 * x.std((0, 2, 3)) * torch.randn(c, generator=g).double())
        var = x.var((0, 2, 3))  # floored: a dead channel's ~0 variance would scale its noise up without bound
        module.running_var.copy_(var.clamp(min=0.1 * float(var.median()) + 1e-6) * rand(c, 0.8, 1.25).double())
        module.weight.copy_(rand(c, 0.1, 0.3) if id(module) in last else rand(c, 0.5, 1.0))
        module.bias.copy_(0.1 * torch.randn(c, generator=g))

    hooks = [m.register_forward_pre_hook(calibrate) for m in norms]
    model.eval()
    model.backbone.body(model.transform(images)[0].tensors)
    for h in hooks:
        h.remove()
    for name, m in model.named_modules():
        if isinstance(m, nn.Conv2d) and not name.startswith("backbone.body"):
            if name.startswith("head.") and not name.endswith(("cls_logits", "bbox_reg")):
                m.weight.normal_(0.0, (2.0 / m.weight[0].numel()) ** 0.5, generator=g)  # towers keep their scale
            if m.bias is not None:
                m.bias.add_(0.1 * torch.randn(m.bias.shape, generator=g))
        elif isinstance(m, nn.GroupNorm):
            m.weight.copy_(rand(m.weight.shape, 0.5, 1.5))
            m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    cls = model.head.classification_head.cls_logits
    cls.weight.normal_(0.0, 0.02, generator=g)
    cls.bias.copy_(-4.6 + 1.5 * torch.randn(cls.bias.shape, generator=g))  # around the prior, some rows high
    model.head.regression_head.bbox_reg.weight.normal_(0.0, 0.01, generator=g)


def gn_detect_model(weights: Path) -> nn.Module:
    """The file through model.weights, on tools/train.py's config tree and build path."""
    from hydra import compose, initialize_config_dir

    overrides = ["model=retinanet_r50_fpn", "norm=affine", f"model.weights={weights}",
                 "model.test.detections_per_image=300"]  # torchvision's detections_per_img
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=overrides)
    validate_train_config(cfg)
    return build_model(cfg.model, NUM_CLASSES).eval()  # model.weights' conventions resolved by the build


def load_images(folder: Path, count: int, size: tuple[int, int]) -> tuple[list[str], torch.Tensor]:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:count]
    if len(files) < count:
        raise SystemExit(f"detector_parity: {folder} holds {len(files)} images, --num-images {count}")
    out = []
    for p in files:
        im = read_rgb(p).resize((size[1], size[0]), Image.BILINEAR)
        out.append(torch.from_numpy(np.asarray(im, dtype=np.uint8).copy()).permute(2, 0, 1))
    return [p.name for p in files], torch.stack(out)


def _diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> dict[str, float]:
    """export_check's tensor_diff over a stage's outputs together: max |a - b| / max |b| of them all."""
    return tensor_diff(torch.cat([y.flatten() for y in b]), torch.cat([x.flatten() for x in a]))


def pair_detections(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> torch.Tensor | None:
    """(i, j) pairs of one image's detections: same label, nearest box, each used once, in a's
    score order (two near-equal scores may come out in either order); None when the labels of a
    and b are not the same multiset."""
    if len(a["labels"]) != len(b["labels"]) or not torch.equal(a["labels"].sort()[0], b["labels"].sort()[0]):
        return None
    used = torch.zeros(len(b["labels"]), dtype=torch.bool)
    out = []
    for i in range(len(a["labels"])):
        cost = (b["boxes"] - a["boxes"][i]).abs().amax(1)
        cost[(b["labels"] != a["labels"][i]) | used] = float("inf")
        j = int(cost.argmin())
        used[j] = True
        out.append((i, j))
    return torch.tensor(out, dtype=torch.long).reshape(-1, 2)


@torch.no_grad()
def compare(tv: nn.Module, ours: nn.Module, batch: torch.Tensor) -> dict[str, Any]:
    h, w = batch.shape[-2:]
    sizes = [(h, w)] * len(batch)
    div = ours.size_divisibility
    padded = F.pad(batch, (0, -w % div, 0, -h % div))
    image_list = tv.transform([x.float() / 255 for x in batch])[0]
    assert [tuple(s) for s in image_list.image_sizes] == sizes, "torchvision's transform resized the images"
    x_tv, x_ours = image_list.tensors, ours.normalizer(padded, sizes)
    c_tv = list(tv.backbone.body(x_tv).values())
    feats = ours.backbone(x_ours)
    c_ours = [feats[k] for k in ours.fpn.in_features]
    p_tv = list(tv.backbone(x_tv).values())
    p_ours = ours.fpn(feats)
    head_tv = tv.head(p_tv)
    logits, deltas = ours.head(p_ours)
    anchors_tv = tv.anchor_generator(image_list, p_tv)[0]
    anchors_ours = torch.cat(ours.anchor_generator([tuple(p.shape[-2:]) for p in p_ours], tuple(padded.shape[-2:])))
    det_tv = tv([x.float() / 255 for x in batch])
    det_ours = ours(padded, sizes)
    counts = [(len(a["scores"]), len(b["scores"])) for a, b in zip(det_tv, det_ours)]
    pairs = [pair_detections(a, b) for a, b in zip(det_tv, det_ours)]
    labels = all(p is not None for p in pairs) and all(a == b for a, b in counts)
    found = [(a, b, p) for a, b, p in zip(det_tv, det_ours, pairs) if p is not None and len(p)]
    boxes = max([float((a["boxes"][p[:, 0]] - b["boxes"][p[:, 1]]).abs().max()) for a, b, p in found] or [0.0])
    scores = max([float((a["scores"][p[:, 0]] - b["scores"][p[:, 1]]).abs().max()) for a, b, p in found] or [0.0])
    return {
        "count_equal": all(a == b for a, b in counts), "labels_equal": labels,
        "boxes_max_abs_px": boxes, "scores_max_abs": scores,
        "detections_per_image": [a for a, _ in counts], "detections_per_image_ours": [b for _, b in counts],
        "unpaired_images": [i for i, p in enumerate(pairs) if p is None],  # boxes and scores: the other images
        "order_equal": all(p is not None and torch.equal(p[:, 0], p[:, 1]) for p in pairs),
        "stages": {"input": _diff([x_ours], [x_tv]), "backbone": _diff(c_ours, c_tv), "fpn": _diff(p_ours, p_tv),
                   "head": {"cls_logits": _diff([logits], [head_tv["cls_logits"]]),
                            "bbox_regression": _diff([deltas], [head_tv["bbox_regression"]])},
                   "anchors": _diff([anchors_ours], [anchors_tv]),
                   "detections": {"boxes_max_abs_px": boxes, "scores_max_abs": scores}},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", required=True, choices=SOURCES)
    parser.add_argument("--images", required=True, type=Path, help="a folder of images (the first N, sorted)")
    parser.add_argument("--size", required=True, type=int, nargs=2, metavar=("H", "W"))
    parser.add_argument("--json", required=True, type=Path, help="where the result is written")
    parser.add_argument("--num-images", type=int, default=4)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    size = (args.size[0], args.size[1])
    names, batch = load_images(args.images, args.num_images, size)
    torch.manual_seed(args.seed)
    tv = torchvision_model(args.source, size)
    randomize(tv, [x.float() / 255 for x in batch], args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / f"{args.source}.pth"
        torch.save(tv.state_dict(), weights)
        ours = gn_detect_model(weights)
    result = {"source": args.source, "size": list(size), "images": names, **compare(tv.eval(), ours, batch),
              "tolerances": {"boxes_px": BOX_TOL, "scores": SCORE_TOL},
              "machine": f"{platform.machine()} {platform.processor() or platform.system()}, "
                         f"{torch.get_num_threads()} torch threads, torch {torch.__version__}",
              "seconds": round(time.perf_counter() - start, 1)}
    result["passed"] = bool(result["count_equal"] and result["labels_equal"] and result["boxes_max_abs_px"] <= BOX_TOL
                            and result["scores_max_abs"] <= SCORE_TOL)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    st = result["stages"]
    rows = [("input", st["input"]), ("backbone C3-C5", st["backbone"]), ("FPN P3-P7", st["fpn"]),
            ("head logits", st["head"]["cls_logits"]), ("head deltas", st["head"]["bbox_regression"]),
            ("anchors", st["anchors"])]
    print(f"{args.source} at {size[0]}x{size[1]}, {len(names)} images: detections {result['detections_per_image']}")
    print(f"{'stage':<16}{'max abs':>12}{'max rel':>12}")
    for name, d in rows:
        print(f"{name:<16}{d['max_abs']:>12.3g}{d['max_rel']:>12.3g}")
    print(f"{'boxes (px)':<16}{result['boxes_max_abs_px']:>12.3g}\n{'scores':<16}{result['scores_max_abs']:>12.3g}")
    print(f"counts equal {result['count_equal']}, labels equal {result['labels_equal']}: "
          f"{'PASS' if result['passed'] else 'FAIL'} (boxes <= {BOX_TOL} px, scores <= {SCORE_TOL})")
    return 0 if result["passed"] else 1


if __name__ == "__main__":
    sys.exit(main())
