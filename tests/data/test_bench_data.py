"""scripts/bench_data.py runs end to end on a small generated json (its numbers are not checked:
speed is measured by the script, never by a test)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from pycocotools.coco import COCO

REPO = Path(__file__).resolve().parents[2]


def _bench():
    spec = importlib.util.spec_from_file_location("bench_data", REPO / "scripts" / "bench_data.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_generated_json_points_at_real_images(coco128, tmp_path: Path) -> None:
    bench = _bench()
    ann = bench.make_dataset(tmp_path / "d", 60, seed=3)
    coco = COCO(str(ann))
    assert len(coco.imgs) == 60 and len(coco.cats) == 80 and len(coco.anns) > 60
    for e in list(coco.imgs.values())[:5]:
        assert (tmp_path / "d" / "images" / e["file_name"]).stat().st_nlink >= 2  # a hard link into the pool
    again = bench.make_dataset(tmp_path / "e", 60, seed=3)
    assert again.read_bytes() == ann.read_bytes()  # deterministic


def test_quick_run_writes_the_json(coco128, tmp_path: Path) -> None:
    out = tmp_path / "r.json"
    assert _bench().main(["--quick", "--images", "40", "--skip", "b,c", "--cache", str(tmp_path / "c"),
                          "--json", str(out)]) == 0
    res = json.loads(out.read_text())
    assert res["pycocotools_load_s"] > 0 and res["items_per_s_ratio_vs_tv_reference"] > 0
