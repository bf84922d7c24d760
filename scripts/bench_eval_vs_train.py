"""Benchmark: one evaluation (inference, post-processing, matching, tuning, report, figures) of
N validation images against the training step's forward passes on N training images.

The model and data are those of the config (default: the demo's, `retinanet_tiny` GN+WS on the
synthetic shapes, untrained weights); ``model.test.score_thresh=0`` (the default override here)
keeps every candidate, so every image reaches the 100-detection cap as in issue 30, the worst
case for post-processing and the report. Timed, each in the same process, interleaved over
``--rounds`` (median):

* train: forward + loss on ``N`` training images, in the config's ``data.ims_per_device``
  batches (the training step's forward, no backward: what the eval is asked to match);
* eval: ``evaluate_model`` as a run's final evaluation calls it on the first ``N`` validation
  images: inference, report files and figures (pr_curves.png, examples.png).

Prints both, the eval's breakdown and the ratio eval / train (target <= 2). Not a test; run by hand:

    OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_eval_vs_train.py [--images 100] [--rounds 3] [override ...]
"""

from __future__ import annotations

import argparse
import logging
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from hydra import compose, initialize_config_dir

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

import gn_detect.engine.launch  # noqa: E402,F401  (registers the resolvers the config needs)
from gn_detect.data import build_dataset  # noqa: E402
from gn_detect.data.samplers import build_test_loader, build_train_loader  # noqa: E402
from gn_detect.engine import evaluate as E  # noqa: E402
from gn_detect.config.validate import size_divisibility  # noqa: E402
from gn_detect.evaluation import subset_coco  # noqa: E402
from gn_detect.modeling import build_model  # noqa: E402

TARGET = 2.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=100)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("overrides", nargs="*", default=[])
    args = ap.parse_args()
    logging.getLogger("gn_detect").setLevel(logging.ERROR)
    with initialize_config_dir(config_dir=str(REPO / "configs"), version_base="1.3"):
        cfg = compose(config_name="config", overrides=["model.test.score_thresh=0.0", *args.overrides])
    os.chdir(REPO)  # data.root is relative to the launch folder, as in tools/train.py
    train_set = build_dataset(cfg.data, "train")
    val_set = build_dataset(cfg.data, "val", train=False)
    model = build_model(cfg.model, len(train_set.label_to_cat_id))
    div = size_divisibility(cfg.model)
    n = min(args.images, len(val_set))
    bs = cfg.data.ims_per_device
    train_batches = list(zip(range(-(-n // bs)), build_train_loader(train_set, bs, seed=0, size_divisibility=div)))
    val_ids = val_set.image_ids[:n]

    class _Val(torch.utils.data.Subset):  # the first n images, with the dataset's COCO cut to them
        coco = subset_coco(val_set.coco, val_ids)
        label_to_cat_id = val_set.label_to_cat_id
        image_dir = getattr(val_set, "image_dir", None)

    val = _Val(val_set, range(n))
    loader = build_test_loader(val, bs, size_divisibility=div)

    def train_fwd() -> float:
        model.train()
        s = time.perf_counter()
        for _, (images, targets, sizes) in train_batches:
            model(images, sizes, targets)
        return time.perf_counter() - s

    breakdown: dict[str, list[float]] = {"inference": [], "report + figures": []}

    def evaluate(out: Path) -> float:
        s = time.perf_counter()
        orig = E.evaluate_detections

        def timed(*a, **k):
            breakdown["inference"].append(time.perf_counter() - s)
            t = time.perf_counter()
            res = orig(*a, **k)
            breakdown["report + figures"].append(time.perf_counter() - t)
            return res

        E.evaluate_detections = timed
        try:
            E.evaluate_model(model, loader, val, out, cfg.eval, device=torch.device("cpu"))
        finally:
            E.evaluate_detections = orig
        return time.perf_counter() - s

    train_t, eval_t = [], []
    with tempfile.TemporaryDirectory() as d:
        for r in range(args.rounds):
            train_t.append(train_fwd())
            eval_t.append(evaluate(Path(d) / str(r)))
    tr, ev = statistics.median(train_t), statistics.median(eval_t)
    print(f"machine: os.cpu_count()={os.cpu_count()}, load average {os.getloadavg()[0]:.2f}, "
          f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS')}, torch threads {torch.get_num_threads()}")
    print(f"{n} images, batch {bs}, model {cfg.model.name}, norm {cfg.norm.name}, "
          f"score_thresh {cfg.model.test.score_thresh}; median of {args.rounds} rounds")
    print(f"training forward + loss, {n} train images: {tr:.2f} s ({1000 * tr / n:.1f} ms/image)")
    print(f"evaluation, {n} val images:               {ev:.2f} s ({1000 * ev / n:.1f} ms/image)")
    for k, v in breakdown.items():
        print(f"  {k:<20s} {statistics.median(v):6.2f} s")
    ratio = ev / tr
    print(f"ratio eval / train forward: {ratio:.2f} (target <= {TARGET:g}: {'OK' if ratio <= TARGET else 'MISSED'})")


if __name__ == "__main__":
    main()
