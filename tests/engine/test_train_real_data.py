"""retinanet_r18_fpn (GN) trains a few iterations on real COCO images (coco128) on CPU and is
evaluated on tiny_coco val (at 128 px to keep it quick): the run folder holds every artifact the design promises."""
from __future__ import annotations

import csv
import json

import pytest
import yaml

from gn_detect.engine.trainer import train

from ._train_utils import compose, one_thread, read_status, records  # noqa: F401

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("one_thread")]

ITERS = 3


def test_r18_gn_on_coco128(shared_data, tmp_path):
    run_dir = tmp_path / "run"
    overrides = [
        "data=coco128", "model=retinanet_r18_fpn", "norm=gn", f"data.root={shared_data}",
        "data.min_size_train=[256]", "data.max_size=320", "data.min_size_test=128", "data.ims_per_device=2",
        "data.num_workers=0", f"solver.max_iter={ITERS}", "solver.warmup_iters=1", "checkpoint.period=1000",
        "log.progress=log", "log.period=1", "eval.num_vis_images=1",
        # an untrained model: keep post-processing (80 classes x 5 levels) and the report small
        "model.test.topk_candidates=100", "model.test.detections_per_image=20",
    ]
    train(compose(overrides), run_dir, base_dir=tmp_path)
    assert read_status(run_dir)["state"] == "done"

    for name in ("report.json", "report.md", "per_class.csv", "pr_curves.png", "metrics.jsonl", "config.yaml",
                 "env.json", "data_skipped.json", "checkpoints/model_final.pth", "checkpoints/last.pth"):
        assert (run_dir / name).is_file(), f"{name} missing; run folder: {sorted(p.name for p in run_dir.iterdir())}"
    assert (run_dir / "pr_curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["model"]["name"] == "retinanet_r18_fpn"
    assert {cfg["model"][p]["norm"] for p in ("backbone", "fpn", "head")} == {"gn"}
    assert cfg["data"]["name"] == "coco" and cfg["solver"]["ims_per_batch"] == 2

    train_recs = records(run_dir, "train")
    assert [r["iter"] for r in train_recs] == list(range(ITERS))
    assert all(r["loss"] is not None and r["loss"] > 0 for r in train_recs), train_recs
    finals = records(run_dir, "final")
    assert len(finals) == 1 and finals[0]["iter"] == ITERS - 1
    assert finals[0]["world_size"] == 1 and finals[0]["skipped_steps"] == 0
    assert 0.0 <= finals[0]["AP"] <= 1.0

    # coco128 has crowd boxes: they are counted (excluded from training targets), not silently lost
    skipped = {d["name"]: d for d in json.loads((run_dir / "data_skipped.json").read_text())["datasets"]}
    assert set(skipped) == {"coco_train", "coco_val"}, sorted(skipped)
    assert skipped["coco_train"]["counts"]["crowd"] > 0, skipped["coco_train"]["counts"]
    assert "coco128" in skipped["coco_train"]["ann_file"] and "tiny_coco" in skipped["coco_val"]["ann_file"]
    assert skipped["coco_val"]["num_images"] == 50

    report = json.loads((run_dir / "report.json").read_text())
    assert report, "empty report.json"
    with open(run_dir / "per_class.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert rows, "per_class.csv has no class rows"
    env = json.loads((run_dir / "env.json").read_text())
    assert env["world_size"] == 1
