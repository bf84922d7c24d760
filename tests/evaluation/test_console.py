"""format_results: the end-of-run table, from the headline dict and the report written with it."""

from __future__ import annotations

import re
from pathlib import Path

from gn_detect.evaluation import HEADLINE_KEYS, evaluate_detections, format_results

from .conftest import det, make_gt
from .synthetic import jitter_detections, make_coco

BOX = [10, 10, 20, 20]


def _value_columns(line: str) -> list[int]:
    """Where each number (or n/a) of a table row ends."""
    return [m.end() for m in re.finditer(r"(\d\.\d{3}|n/a)(?=\s)", line + " ")][:3]


def test_table_lines_alignment_and_coverage(tmp_path: Path) -> None:
    gt = make_coco(30, 4, seed=2)
    metrics = evaluate_detections(gt, jitter_detections(gt, seed=2), tmp_path, tune="half", tune_seed=5,
                                  figures=False)
    metrics = {**metrics, "iter": 99, "ims_per_sec": 3.2}  # a training run's final record has more keys
    text = format_results(metrics, run_dir="outputs/2025-01-01/run", report_path=tmp_path / "report.md")
    lines = text.splitlines()
    assert 8 <= len(lines) <= 12 and not text.endswith("\n")
    assert "\x1b" not in text and all(len(ln) <= 120 for ln in lines)
    coco, label, box = (next(ln for ln in lines if ln.lstrip().startswith(k)) for k in ("COCO", "label", "box"))
    assert f"{metrics['AP']:.3f}" in coco and f"{metrics['AP50']:.3f}" in coco and f"{metrics['AP75']:.3f}" in coco
    for row, lvl in ((label, "label"), (box, "box")):
        for k in ("precision", "recall", "f1"):
            assert f"{metrics[f'{lvl}_{k}']:.3f}" in row
    # the three value columns line up under their headers
    assert _value_columns(coco) == _value_columns(label) == _value_columns(box)
    header = next(ln for ln in lines if "precision" in ln and "recall" in ln)
    assert [header.index(h) + len(h) for h in ("precision", "recall", "F1")] == _value_columns(label)
    assert "all 30 images of the split" in coco
    assert "report half, 15 images (thresholds tuned on the other 15, seed 5)" in label
    assert lines[-2].split() == ["run", "folder", "outputs/2025-01-01/run"]
    assert lines[-1].split() == ["report", str(tmp_path / "report.md")]
    assert not any("WARNING" in ln for ln in lines)


def test_undefined_values_missing_report_and_same_split(tmp_path: Path) -> None:
    metrics = {k: None for k in HEADLINE_KEYS}
    text = format_results(metrics, run_dir=None, report_path=None)
    label = next(ln for ln in text.splitlines() if ln.lstrip().startswith("label"))
    assert label.split()[4:7] == ["n/a", "n/a", "n/a"] and "no report written" in label
    assert text.splitlines()[-1].split() == ["report", "not", "written"]
    gt = make_gt([(1, 1, BOX), (2, 2, BOX)], num_images=2)
    metrics = evaluate_detections(gt, [det(1, 1, BOX, 0.9)], tmp_path, tune="same", figures=False)
    text = format_results(metrics, run_dir=tmp_path, report_path=tmp_path / "report.md")
    assert "all 2 images, also tuned on them (optimistic)" in text
    assert "2 more warning(s) in report.md" in text  # tuned on the evaluation split; dog never predicted


def test_predict_everything_warning_line(tmp_path: Path) -> None:
    # cat in images 1-4 of 10 and detected in all 10 with one score: predicted everywhere; dog in
    # all 10 and detected there. Micro: 14 / 20 = 0.7, the baseline 14 / 20 as well.
    gt = make_gt([(i, 1, BOX) for i in range(1, 5)] + [(i, 2, BOX) for i in range(1, 11)], num_images=10)
    dets = [det(i, 1, BOX, 0.5) for i in range(1, 11)] + [det(i, 2, BOX, 0.9) for i in range(1, 11)]
    metrics = evaluate_detections(gt, dets, tmp_path, tune="same", figures=False)
    text = format_results(metrics, run_dir=tmp_path, report_path=tmp_path / "report.md")
    (warning,) = [ln for ln in text.splitlines() if "WARNING" in ln]
    assert warning.strip() == ("WARNING: tuned thresholds degenerate to 'predict everything' (label precision 0.700 "
                               "vs 0.700 for every class in every image; in every image: cat); see report.md")
