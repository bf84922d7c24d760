"""Benchmark: COCOeval alone vs. the threshold tuning + label/box tables on top.

Synthetic set: 5,000 images x 100 detections, 80 classes (defaults). Prints the time of
COCOeval (loadRes + evaluate + accumulate + summarize), the time of everything else
``build_report`` does (arrays, per-image cap, box matching, label pairs, tuning, tables), and
the time to write the report files and figures. Not a test; run by hand:

    .venv/bin/python scripts/bench_eval.py [--images 5000] [--dets 100] [--classes 80]
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path
from unittest import mock

import numpy as np

from gn_detect.evaluation import report as report_mod
from gn_detect.evaluation.coco_eval import available_backends, coco_metrics
from gn_detect.evaluation.report import build_report, evaluate_detections
from gn_detect.evaluation.synthetic import make_coco


def fast_detections(coco, dets_per_image: int, seed: int = 0) -> list[dict]:
    """Vectorized stand-in for synthetic.jitter_detections (same spirit, 500k dets in ~1 s):
    80% of GT get a jittered box (+30% duplicates), the rest of each image is random boxes."""
    rng = np.random.default_rng(seed)
    anns = coco.dataset["annotations"]
    cat_ids = np.array(sorted(coco.getCatIds()))
    img = np.array([a["image_id"] for a in anns])
    cat = np.array([a["category_id"] for a in anns])
    box = np.array([a["bbox"] for a in anns], float).reshape(-1, 4)
    hit = rng.random(len(anns)) < 0.8
    dup = hit & (rng.random(len(anns)) < 0.3)
    sel = np.r_[np.flatnonzero(hit), np.flatnonzero(dup)]
    t_img, t_cat, b = img[sel], cat[sel].copy(), box[sel]
    j = rng.normal(0, 0.1, (len(sel), 4))
    t_box = np.c_[b[:, 0] + j[:, 0] * b[:, 2], b[:, 1] + j[:, 1] * b[:, 3], b[:, 2] * np.exp(j[:, 2]), b[:, 3] * np.exp(j[:, 3])]
    conf = rng.random(len(sel)) < 0.05
    t_cat[conf] = rng.choice(cat_ids, conf.sum())
    t_score = rng.uniform(0.3, 1.0, len(sel))
    # pad every image to dets_per_image with random false positives
    ids = np.array(sorted(coco.getImgIds()))
    n_true = np.bincount(np.searchsorted(ids, t_img), minlength=len(ids))
    n_fp = np.maximum(dets_per_image - n_true, 0)
    f_img = np.repeat(ids, n_fp)
    n = len(f_img)
    w, h = rng.uniform(8, 320, n), rng.uniform(8, 240, n)
    f_box = np.c_[rng.uniform(0, 640 - w), rng.uniform(0, 480 - h), w, h]
    f_cat = rng.choice(cat_ids, n)
    f_score = rng.uniform(0, 0.7, n)
    all_img = np.r_[t_img, f_img]
    all_cat = np.r_[t_cat, f_cat]
    all_box = np.r_[t_box, f_box].round(2)
    all_score = np.r_[t_score, f_score].round(4)
    order = np.lexsort((-all_score, all_img))  # engine order: per image, by score
    return [
        {"image_id": int(i), "category_id": int(c), "bbox": bb, "score": s}
        for i, c, bb, s in zip(
            all_img[order].tolist(), all_cat[order].tolist(), all_box[order].tolist(), all_score[order].tolist()
        )
    ]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--skip-files", action="store_true", help="do not time writing report files/figures")
    args = ap.parse_args()

    t = time.perf_counter()
    coco = make_coco(args.images, args.classes, boxes_per_image=7.0, seed=0)
    dets = fast_detections(coco, args.dets)
    print(f"data: {args.images} images, {len(coco.dataset['annotations'])} GT, {len(dets)} detections, "
          f"{args.classes} classes ({time.perf_counter() - t:.1f} s to generate)")
    print(f"cpu: os.cpu_count()={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))}")

    times = {}
    for backend in available_backends():
        t = time.perf_counter()
        res = coco_metrics(coco, dets, backend=backend)
        times[backend] = time.perf_counter() - t
        print(f"COCOeval [{backend}]: {times[backend]:.2f} s  (AP={res.stats['AP']:.4f})")

    # overhead = everything build_report does besides COCOeval: reuse the result computed above
    with mock.patch.object(report_mod, "coco_metrics", lambda *a, **k: res):
        t = time.perf_counter()
        rep, *_ = build_report(coco, dets)
        overhead = time.perf_counter() - t
    h = rep["headline"]
    print(f"tuning + label/box tables (build_report minus COCOeval): {overhead:.2f} s  "
          f"(label F1={h['label_f1']:.3f}, box F1={h['box_f1']:.3f})")
    print(f"overhead vs COCOeval [pycocotools]: {overhead:.2f} s on top of {times['pycocotools']:.2f} s "
          f"(+{100 * overhead / times['pycocotools']:.0f}%); target < 5 s: {'OK' if overhead < 5 else 'MISSED'}")

    if not args.skip_files:
        with tempfile.TemporaryDirectory() as d, mock.patch.object(report_mod, "coco_metrics", lambda *a, **k: res):
            t = time.perf_counter()
            evaluate_detections(coco, dets, Path(d))
            print(f"evaluate_detections with report files + pr_curves.png (minus COCOeval): "
                  f"{time.perf_counter() - t:.2f} s")


if __name__ == "__main__":
    main()
