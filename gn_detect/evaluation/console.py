"""The compact results table printed at the end of a training run and of tools/evaluate.py.

``format_results(metrics, run_dir=..., report_path=...)`` turns the headline dict that
``evaluate_model`` / ``evaluate_detections`` return into about ten aligned plain-text lines:
COCO AP/AP50/AP75, label and box precision/recall/F1 at the tuned thresholds, the label baseline
(every class in every image; the label row says DEGENERATE when it does not beat it), which images each
row covers (report.json's ``coverage``, read next to ``report_path``), the "predict everything"
warning (report.json's ``thresholds.predict_everything``), the run folder and the report path.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from gn_detect.runs.layout import REPORT
from gn_detect.evaluation.degenerate import predict_everything_warning

__all__ = ["format_results"]

_NAME_W = 18
_VAL_W = 9


def _num(v: Any) -> str:
    if v is None or not isinstance(v, (int, float)) or (isinstance(v, float) and not math.isfinite(v)):
        return "n/a"
    return f"{float(v):.3f}"


def _row(name: str, values: list[Any], note: str) -> str:
    cells = "".join(_num(v).rjust(_VAL_W) for v in values)
    return f"  {name.ljust(_NAME_W)}{cells}   {note}".rstrip()


def _header(cols: tuple[str, ...], note: str) -> str:
    return f"  {'':{_NAME_W}}" + "".join(c.rjust(_VAL_W) for c in cols) + f"   {note}"


def _read_report(report_path: str | Path | None) -> dict[str, Any] | None:
    """report.json next to ``report_path`` (report.md or report.json); None when unreadable."""
    if report_path is None:
        return None
    try:
        return json.loads(Path(report_path).with_name(REPORT).read_text())
    except (OSError, ValueError):
        return None


def _coverage_notes(report: dict[str, Any] | None, report_path: str | Path | None) -> tuple[str, str]:
    """(images of the COCO row, images of the thresholded rows)."""
    cov = (report or {}).get("coverage")
    if not cov:
        unknown = "images: unknown (no report written)" if report_path is None else "images: unknown (no report.json)"
        return unknown, unknown
    return f"all {cov['ap']['images']} images of the split", thresholded_images(cov["thresholded"])


def thresholded_images(th: Mapping[str, Any]) -> str:
    """Which images the numbers at the tuned thresholds count, from report.json's
    ``coverage.thresholded`` (the console table and report.md say it the same way)."""
    n, tuned = th["images"], th["tuned_on"]
    if th["tune"] == "half":
        return f"report half, {n} images (thresholds tuned on the other {tuned}, seed {th['tune_seed']})"
    if th["tune"] == "separate":
        return f"all {n} images (thresholds tuned on a separate set of {tuned})"
    return f"all {n} images, also tuned on them (optimistic)"


def _warning_lines(report: dict[str, Any] | None) -> list[str]:
    if report is None:
        return []
    block = report.get("thresholds", {}).get("predict_everything")
    full = predict_everything_warning(block) if block else None
    out = [f"  WARNING: {predict_everything_warning(block, short=True)}"] if full else []
    others = len([w for w in report.get("warnings", []) if w != full])
    if others:
        out.append(f"  {others} more warning(s) in report.md")
    return out


def format_results(metrics: Mapping[str, Any], *, run_dir: str | Path | None,
                   report_path: str | Path | None) -> str:
    """The end-of-run results table (no colours, no trailing newline). ``metrics``: the headline
    dict (``AP``, ``AP50``, ``AP75``, ``label_*``, ``label_baseline_*``, ``label_degenerate``, ``box_*``; missing or None -> n/a; other
    keys are ignored; ``skipped_images``, when not 0, gets a line). ``report_path``: the report.md written with it (None: not written);
    report.json beside it supplies the coverage and the warnings."""
    report = _read_report(report_path)
    ap_note, thr_note = _coverage_notes(report, report_path)
    m = dict(metrics)
    lines = [
        "gn-detect results",
        _header(("AP", "AP50", "AP75"), "images"),
        _row("COCO", [m.get("AP"), m.get("AP50"), m.get("AP75")], ap_note),
        _header(("precision", "recall", "F1"), "images"),
        _row("label @ tuned thr", [m.get(f"label_{k}") for k in ("precision", "recall", "f1")],
             ("DEGENERATE (not above its baseline: read box level and AP); " if m.get("label_degenerate") else "")
             + thr_note),
        _row("label baseline", [m.get(f"label_baseline_{k}") for k in ("precision", "recall", "f1")],
             "every class in every image, the same images"),
        _row("box @ tuned thr", [m.get(f"box_{k}") for k in ("precision", "recall", "f1")], "the same images"),
        *_warning_lines(report),
        *([f"  {'skipped images'.ljust(_NAME_W)}{m['skipped_images']} could not be read and are left out of every "
           "number (see the log)"] if m.get("skipped_images") else []),
        f"  {'run folder'.ljust(_NAME_W)}{run_dir if run_dir is not None else '-'}",
        f"  {'report'.ljust(_NAME_W)}{report_path if report_path is not None else 'not written'}",
    ]
    return "\n".join(lines)
