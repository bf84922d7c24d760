"""COCO box metrics through faster_coco_eval (the default) or pycocotools' COCOeval: the same
algorithm and the same numbers (tests/evaluation/test_coco_eval.py); faster_coco_eval's C++ took
5.5-8.5 s where COCOeval took 49 s for 5,000 images x 100 detections (2-core CPU, docs/benchmarks.md).

All values are fractions in [0, 1]; a metric COCOeval reports as -1 (no GT in that area range
or class) is NaN here and ``null`` in JSON.
"""

from __future__ import annotations

import contextlib
import copy
import io
from dataclasses import dataclass, field
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from gn_detect.cocoapi import coco_from_dict

__all__ = ["STAT_NAMES", "BACKENDS", "DEFAULT_BACKEND", "CocoResult", "available_backends", "coco_metrics",
           "coco_metrics_arrays", "result_arrays"]

# order of COCOeval.stats for iouType="bbox"
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")
DEFAULT_BACKEND = "faster_coco_eval"


def available_backends() -> list[str]:
    out = ["pycocotools"]
    try:
        import faster_coco_eval  # noqa: F401

        out.append("faster_coco_eval")
    except ImportError:
        pass
    return out


@dataclass
class CocoResult:
    stats: dict[str, float]  # STAT_NAMES -> value (NaN where undefined)
    per_class_ap: dict[int, float]  # cat_id -> AP@[.5:.95] (NaN: class has no GT)
    per_class_ap50: dict[int, float]
    summary: str  # COCOeval's printed summary
    backend: str
    precision: np.ndarray | None = field(default=None, repr=False)  # [T, R, K, A, M]


def result_arrays(detections: Sequence[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """COCO result dicts as columns: (image_id int64, category_id int64, xywh (M, 4) float64,
    score float64), in input order."""
    m = len(detections)
    img = np.fromiter((d["image_id"] for d in detections), np.int64, m)
    cat = np.fromiter((d["category_id"] for d in detections), np.int64, m)
    boxes = np.array([d["bbox"] for d in detections], dtype=np.float64).reshape(m, 4)
    scores = np.fromiter((d["score"] for d in detections), np.float64, m)
    return img, cat, boxes, scores


def _result_dicts(img: np.ndarray, cat: np.ndarray, boxes: np.ndarray, scores: np.ndarray) -> list[dict[str, Any]]:
    """Fresh result dicts (COCOeval writes into them, so never the caller's) with the fields
    ``loadRes`` gives bbox results: area = w * h, id = 1..M, iscrowd 0 (no segmentation: bbox
    evaluation never reads it)."""
    area = (boxes[:, 2] * boxes[:, 3]).tolist()
    return [
        {"image_id": i, "category_id": c, "bbox": b, "score": s, "area": a, "id": k, "iscrowd": 0}
        for k, (i, c, b, s, a) in enumerate(
            zip(img.tolist(), cat.tolist(), boxes.tolist(), scores.tolist(), area), start=1)
    ]


def _empty_result(coco_gt: COCO) -> COCO:
    # pycocotools' loadRes cannot take []: an empty result set is still well defined
    # (AP = 0 for classes with GT), so build the empty result object by hand.
    return coco_from_dict({
        "images": list(coco_gt.dataset.get("images", [])),
        "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
        "annotations": [],
    })


def _per_class(precision: np.ndarray, cat_ids: list[int], t: slice | int) -> dict[int, float]:
    # detectron2: precision[:, :, k, area=all, maxDets=last]; -1 marks "no GT"
    out = {}
    for k, cid in enumerate(cat_ids):
        p = precision[t, :, k, 0, -1]
        p = p[p > -1]
        out[int(cid)] = float(p.mean()) if p.size else float("nan")
    return out


def _stats_dict(stats: np.ndarray) -> dict[str, float]:
    return {n: (float(v) if v >= 0 else float("nan")) for n, v in zip(STAT_NAMES, stats[: len(STAT_NAMES)])}


def _run_pycocotools(coco_gt: COCO, dets: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[int], str]:
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        coco_dt = coco_gt.loadRes(dets) if dets else _empty_result(coco_gt)
        ev = COCOeval(coco_gt, coco_dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
    summary = io.StringIO()
    with contextlib.redirect_stdout(summary):
        ev.summarize()
    return np.asarray(ev.stats), ev.eval["precision"], list(ev.params.catIds), summary.getvalue()


def _run_faster(coco_gt: COCO, dets: list[dict[str, Any]]) -> tuple[np.ndarray, np.ndarray, list[int], str]:
    from faster_coco_eval import COCO as FCOCO
    from faster_coco_eval import COCOeval_faster

    lines: list[str] = []
    quiet = lambda *a, **k: None  # noqa: E731
    ds = coco_gt.dataset
    # COCOeval sets keys ("ignore") on the GT dicts: a copy of each dict keeps ours clean
    # (a full deepcopy cost 0.8 s at 35k boxes). The result object is built directly from the
    # fresh dicts of _result_dicts: loadRes deep-copied them and added polygons, ~4 s at 500k.
    gt_ds = {k: [dict(x) for x in ds.get(k, [])] for k in ("images", "categories", "annotations")}
    gt = FCOCO(gt_ds, print_function=quiet)
    dt = FCOCO({"images": gt_ds["images"], "categories": gt_ds["categories"], "annotations": dets},
               print_function=quiet)
    ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.print_function = lambda s, *a, **k: lines.append(str(s))
    ev.summarize()
    return np.asarray(ev.stats), np.asarray(ev.eval["precision"]), list(ev.params.catIds), "\n".join(lines) + "\n"


def coco_metrics(
    coco_gt: COCO, detections: Sequence[dict[str, Any]], backend: str = DEFAULT_BACKEND
) -> CocoResult:
    """COCOeval bbox metrics (standard params: maxDets 1/10/100, IoU .50:.05:.95).

    ``detections`` are COCO result dicts in original-image pixels. An empty list gives AP 0
    for every class that has GT and NaN elsewhere, exactly what COCOeval computes for an
    empty result set. An image id not in ``coco_gt`` is a ValueError.
    """
    return coco_metrics_arrays(coco_gt, *result_arrays(detections), backend=backend)


def coco_metrics_arrays(
    coco_gt: COCO,
    image_ids: np.ndarray,
    category_ids: np.ndarray,
    boxes: np.ndarray,
    scores: np.ndarray,
    backend: str = DEFAULT_BACKEND,
) -> CocoResult:
    """``coco_metrics`` of detections given as columns (see ``result_arrays``)."""
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not installed. Fix: pip install -e . (faster-coco-eval is a "
                         "dependency of gn-detect), or use backend='pycocotools'")
    unknown = ~np.isin(image_ids, np.fromiter(coco_gt.getImgIds(), np.int64))
    if unknown.any():
        raise ValueError(f"{int(unknown.sum())} detection image_id(s) not in the ground truth, e.g. "
                         f"{np.unique(image_ids[unknown])[:5].tolist()}")
    dets = _result_dicts(image_ids, category_ids, boxes, scores)
    if not coco_gt.getImgIds() or not coco_gt.getCatIds():
        nan = float("nan")
        return CocoResult({n: nan for n in STAT_NAMES}, {}, {}, "(no images or categories)\n", backend)
    run = _run_faster if backend == "faster_coco_eval" else _run_pycocotools
    stats, precision, cat_ids, summary = run(coco_gt, dets)
    return CocoResult(
        stats=_stats_dict(stats),
        per_class_ap=_per_class(precision, cat_ids, slice(None)),
        per_class_ap50=_per_class(precision, cat_ids, 0),
        summary=summary,
        backend=backend,
        precision=precision,
    )
