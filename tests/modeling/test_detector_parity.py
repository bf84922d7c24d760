"""scripts/detector_parity.py through its command line, small: torchvision's RetinaNet v1 and v2
(seeded random weights) against the same file loaded through ``model.weights``; the Done-when
limits (equal counts and labels, boxes within 0.01 px, scores within 1e-4) at sizes that are not
multiples of 128. docs/benchmarks.md has the 4-image runs at 512x640 and 480x640."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.engine._train_utils import REPO, child_env, shapes_root  # noqa: F401

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("source,size", [("torchvision_v1", (96, 160)), ("torchvision_v2", (160, 96))])
def test_detector_parity_script(shapes_root, tmp_path, source, size):  # noqa: F811
    out = tmp_path / "parity.json"
    r = subprocess.run([sys.executable, str(REPO / "scripts" / "detector_parity.py"), "--source", source,
                        "--images", str(shapes_root / "val"), "--size", *map(str, size), "--num-images", "2",
                        "--json", str(out)], cwd=str(tmp_path), env=child_env(), timeout=600,
                       stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    assert r.returncode == 0, r.stdout[-3000:]
    result = json.loads(out.read_text())
    assert result["source"] == source and result["size"] == list(size) and len(result["images"]) == 2
    assert result["count_equal"] and result["labels_equal"] and min(result["detections_per_image"]) > 10
    assert result["boxes_max_abs_px"] <= 0.01 and result["scores_max_abs"] <= 1e-4
    assert result["stages"]["anchors"]["max_abs"] == 0.0  # torchvision's anchors, reproduced exactly
    assert result["stages"]["head"]["cls_logits"]["max_rel"] < 1e-4
    assert "PASS" in r.stdout and "backbone C3-C5" in r.stdout
