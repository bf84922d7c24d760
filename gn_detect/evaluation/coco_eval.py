"""COCO box metrics through pycocotools' COCOeval (or faster_coco_eval, same numbers).

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

from gn_detect.cocoapi import coco_from_dict
from pycocotools.cocoeval import COCOeval

__all__ = ["STAT_NAMES", "CocoResult", "coco_metrics", "available_backends"]

# order of COCOeval.stats for iouType="bbox"
STAT_NAMES = ("AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl")
BACKENDS = ("pycocotools", "faster_coco_eval")


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


def _result_dicts(detections: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    # loadRes writes area/id/iscrowd/segmentation into the dicts it gets: give it copies so the
    # caller's list stays as the engine produced it.
    return [
        {
            "image_id": int(d["image_id"]),
            "category_id": int(d["category_id"]),
            "bbox": [float(v) for v in d["bbox"]],
            "score": float(d["score"]),
        }
        for d in detections
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
    gt = FCOCO(coco_gt.dataset, use_deepcopy=True, print_function=quiet)
    dt = gt.loadRes(dets)
    ev = COCOeval_faster(gt, dt, iouType="bbox", print_function=quiet)
    ev.evaluate()
    ev.accumulate()
    ev.print_function = lambda s, *a, **k: lines.append(str(s))
    ev.summarize()
    return np.asarray(ev.stats), np.asarray(ev.eval["precision"]), list(ev.params.catIds), "\n".join(lines) + "\n"


def coco_metrics(
    coco_gt: COCO, detections: Sequence[dict[str, Any]], backend: str = "pycocotools"
) -> CocoResult:
    """COCOeval bbox metrics (standard params: maxDets 1/10/100, IoU .50:.05:.95).

    ``detections`` are COCO result dicts in original-image pixels. An empty list gives AP 0
    for every class that has GT and NaN elsewhere, exactly what COCOeval computes for an
    empty result set.
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend not in available_backends():
        raise ValueError(f"backend {backend!r} is not installed (pip install faster-coco-eval, the 'fast' extra)")
    dets = _result_dicts(detections)
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
