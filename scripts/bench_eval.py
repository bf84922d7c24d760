"""Benchmark: a full evaluation with its report, as the engine runs it, with a breakdown.

Synthetic set: 5,000 images x 100 detections, 80 classes (defaults); the ground truth is the
evaluation tests' generator (tests/evaluation/synthetic.py), so this runs from a checkout.
Times ``evaluate_detections(..., tune="half")`` end to end (COCO AP on every image, thresholds
tuned on one half, the tables on the other, report.json / report.md / per_class.csv written),
without and with the figures, then each stage on its own:

* arrays, per-image cap, box matching, label pairs (``prepare``)
* COCOeval (faster-coco-eval, the default backend)
* split into halves, threshold tuning, the box / label / per-class tables
* writing report.json, report.md, per_class.csv
* pr_curves.png

``--pycocotools`` also times COCOeval with pycocotools (about a minute) and checks both give
the same AP. Not a test; run by hand:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_eval.py [--images 5000] [--dets 100] [--classes 80]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # gn_detect and tests/ of this checkout

from gn_detect.evaluation import report as R  # noqa: E402
from gn_detect.evaluation.coco_eval import coco_metrics, coco_metrics_arrays  # noqa: E402
from gn_detect.evaluation.thresholds import tune_thresholds  # noqa: E402
from tests.evaluation.synthetic import make_coco  # noqa: E402

TARGET_S = 12.0


def fast_detections(coco, dets_per_image: int, seed: int = 0) -> list[dict]:
    """Vectorized stand-in for tests/evaluation/synthetic.jitter_detections (same spirit, 500k dets in ~1 s):
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


def stages(coco, dets, out: Path) -> dict[str, float]:
    """The steps of evaluate_detections(tune="half") one by one, timed (same calls, same order)."""
    t, T = {}, time.perf_counter
    s = T()
    full = R.prepare(coco, dets)
    t["arrays, cap, matching, label pairs"] = T() - s
    s = T()
    d, gt = full.dets, full.gt
    coco_res = coco_metrics_arrays(coco, gt.image_ids[d.img], gt.cat_ids[d.cls], d.boxes, d.scores)
    t["COCOeval (faster-coco-eval)"] = T() - s
    s = T()
    parts = R._parts(full, "half", 0, None, None, 0.5, 100)
    th = tune_thresholds(parts.tune.events("label"), "f1", None, "label")
    box, bc = R._level_tables(parts, th, "box")
    label, lc = R._level_tables(parts, th, "label")
    R._per_class_rows(parts.report, th, coco_res, bc, lc)
    t["halves, threshold tuning, tables"] = T() - s
    report, *_ = R.build_report(coco, dets, tune="half")  # not timed: the report the files are made of
    s = T()
    R.write_json_atomic(out / "report.json", report, indent=1)
    (out / "report.md").write_text(R.render_markdown(report))
    R.write_csv(out / "per_class.csv", report)
    t["report.json, report.md, per_class.csv"] = T() - s
    s = T()
    R._write_figures(out, report, parts, th, coco, None, 0)
    t["pr_curves.png"] = T() - s
    return t


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=5000)
    ap.add_argument("--dets", type=int, default=100)
    ap.add_argument("--classes", type=int, default=80)
    ap.add_argument("--pycocotools", action="store_true", help="also time COCOeval with pycocotools (slow)")
    args = ap.parse_args()
    logging.getLogger("gn_detect").setLevel(logging.ERROR)  # the report's warnings are not the point here

    t = time.perf_counter()
    coco = make_coco(args.images, args.classes, boxes_per_image=7.0, seed=0)
    dets = fast_detections(coco, args.dets)
    print(f"data: {args.images} images, {len(coco.dataset['annotations'])} GT, {len(dets)} detections, "
          f"{args.classes} classes ({time.perf_counter() - t:.1f} s to generate)")
    print(f"machine: {cpu_name()}, os.cpu_count()={os.cpu_count()}, affinity={len(os.sched_getaffinity(0))}, "
          f"load average {os.getloadavg()[0]:.2f}, OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}")

    with tempfile.TemporaryDirectory() as d:
        totals = {}
        for figures in (False, True):
            s = time.perf_counter()
            head = R.evaluate_detections(coco, dets, Path(d), tune="half", figures=figures)
            totals[figures] = time.perf_counter() - s
        t = stages(coco, dets, Path(d))
    print(f"AP={head['AP']:.4f} (all {args.images} images), label F1={head['label_f1']:.3f}, "
          f"box F1={head['box_f1']:.3f} (report half)")
    print(f"evaluate_detections, report files, no figures: {totals[False]:.2f} s "
          f"(target <= {TARGET_S:.0f} s: {'OK' if totals[False] <= TARGET_S else 'MISSED'})")
    print(f"evaluate_detections, report files and pr_curves.png: {totals[True]:.2f} s")
    print("breakdown, each stage timed on its own:")
    for k, v in t.items():
        print(f"  {k:<40s} {v:6.2f} s")
    print(f"  {'sum':<40s} {sum(t.values()):6.2f} s")

    if args.pycocotools:
        s = time.perf_counter()
        ref = coco_metrics(coco, dets, backend="pycocotools")
        print(f"COCOeval (pycocotools) alone: {time.perf_counter() - s:.2f} s, AP={ref.stats['AP']:.4f} "
              f"(|difference| {abs(ref.stats['AP'] - head['AP']):.1e})")


if __name__ == "__main__":
    main()
