"""The evaluation report: COCO AP plus precision/recall/F1 at tuned score thresholds.

``evaluate_detections`` is the entry point the engine calls; it writes report.json,
report.md, per_class.csv and figures into the run folder and returns the flat headline dict
that goes into metrics.jsonl. Definitions: docs/metrics.md; JSON layout: docs/report_schema.md.
"""

from __future__ import annotations

import csv
import json
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO

from gn_detect.evaluation.coco_eval import STAT_NAMES, CocoResult, coco_metrics
from gn_detect.evaluation.events import Counts, Events, nan_to_none
from gn_detect.evaluation.labels import label_pairs
from gn_detect.evaluation.matching import IGNORED, BoxMatches, DetArrays, GroundTruth, cap_per_image, match_boxes
from gn_detect.evaluation.thresholds import Thresholds, tune_thresholds

__all__ = ["HEADLINE_KEYS", "SCHEMA_VERSION", "Prepared", "prepare", "build_report", "evaluate_detections"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
# the names sweeps read from metrics.jsonl: do not rename
HEADLINE_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "label_precision", "label_recall", "label_f1",
    "box_precision", "box_recall", "box_f1",
)  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """One split, matched: GT arrays, capped detections, box matches and both event sets."""

    gt: GroundTruth
    dets: DetArrays
    kept: np.ndarray  # indices of the input detections that survived the per-image cap
    matches: BoxMatches
    box: Events
    label: Events

    def events(self, level: str) -> Events:
        return self.label if level == "label" else self.box


def prepare(
    coco_gt: COCO, detections: Sequence[dict[str, Any]], iou_threshold: float = 0.5, max_dets: int | None = 100
) -> Prepared:
    gt = GroundTruth.from_coco(coco_gt)
    all_dets = DetArrays.from_results(detections, gt)
    kept = cap_per_image(all_dets.img, all_dets.scores, max_dets)
    dets = all_dets.take(kept)
    matches = match_boxes(gt, dets, iou_threshold)
    return Prepared(gt, dets, kept, matches, matches.events(), label_pairs(gt, dets).events())


def _stats(counts: Counts) -> dict[str, Any]:
    return {"micro": _clean(counts.micro()), "macro": _clean(counts.macro())}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (nan_to_none(v) if isinstance(v, float) else v) for k, v in d.items()}


def _thr_json(t: float) -> float | None:
    return None if not np.isfinite(t) else float(t)


def build_report(
    coco_gt: COCO,
    detections: Sequence[dict[str, Any]],
    *,
    tune_gt: COCO | None = None,
    tune_detections: Sequence[dict[str, Any]] | None = None,
    iou_threshold: float = 0.5,
    criterion: str = "f1",
    target_precision: float | None = None,
    level: str = "label",
    max_dets: int | None = 100,
    backend: str = "pycocotools",
) -> tuple[dict[str, Any], Prepared, Thresholds, CocoResult]:
    """Everything ``evaluate_detections`` writes, without writing: (report, eval split,
    thresholds, COCO result)."""
    if level not in ("label", "box"):
        raise ValueError(f"level must be 'label' or 'box', got {level!r}")
    if not 0 < iou_threshold <= 1:
        raise ValueError("iou_threshold must be in (0, 1]")
    if (tune_gt is None) != (tune_detections is None):
        raise ValueError("give both tune_gt and tune_detections, or neither")
    warnings: list[str] = []

    ev = prepare(coco_gt, detections, iou_threshold, max_dets)
    kept_dets = detections if len(ev.kept) == len(detections) else [detections[i] for i in ev.kept.tolist()]
    coco = coco_metrics(coco_gt, kept_dets, backend=backend)

    if tune_gt is None:
        tune, tuned_on_eval, overlap = ev, True, ev.gt.num_images
    else:
        tune = prepare(tune_gt, tune_detections or [], iou_threshold, max_dets)
        if not np.array_equal(tune.gt.cat_ids, ev.gt.cat_ids):
            raise ValueError("tuning and evaluation ground truth have different category ids")
        overlap = int(np.intersect1d(tune.gt.image_ids, ev.gt.image_ids).size)
        tuned_on_eval = tune_gt is coco_gt or np.array_equal(tune.gt.image_ids, ev.gt.image_ids)
        if overlap and not tuned_on_eval:
            warnings.append(
                f"the tuning and evaluation splits share {overlap} images: the thresholds saw part of the evaluation data"
            )
    if tuned_on_eval:
        warnings.append(
            "thresholds were tuned on the evaluation split itself: precision/recall/F1 at the tuned thresholds are "
            "optimistic; pass a separate tuning split (tune_gt, tune_detections) for honest numbers"
        )

    th = tune_thresholds(tune.events(level), criterion, target_precision, level)
    bc = ev.box.counts_at(th.per_class)
    lc = ev.label.counts_at(th.per_class)
    d = ev.dets
    K = ev.gt.num_classes
    if len(d):
        above = d.scores >= th.per_class[d.cls]
        n_det = np.bincount(d.cls[above], minlength=K)
        n_ign = np.bincount(d.cls[above & (ev.matches.status == IGNORED)], minlength=K)
        n_all = np.bincount(d.cls, minlength=K)
    else:
        n_det = n_ign = n_all = np.zeros(K, np.int64)

    per_class = []
    for k in range(K):
        cid = int(ev.gt.cat_ids[k])
        per_class.append(
            {
                "name": ev.gt.names[k],
                "cat_id": cid,
                "AP": nan_to_none(coco.per_class_ap.get(cid)),
                "AP50": nan_to_none(coco.per_class_ap50.get(cid)),
                "threshold": _thr_json(th.per_class[k]),
                "threshold_source": th.source[k],
                "box": {
                    "precision": nan_to_none(bc.precision[k]),
                    "recall": nan_to_none(bc.recall[k]),
                    "f1": nan_to_none(bc.f1[k]),
                    "tp": int(bc.tp[k]),
                    "fp": int(bc.fp[k]),
                    "num_gt": int(bc.num_pos[k]),
                    "num_det": int(n_det[k]),
                    "num_ignored": int(n_ign[k]),
                    "num_det_all": int(n_all[k]),
                },
                "label": {
                    "precision": nan_to_none(lc.precision[k]),
                    "recall": nan_to_none(lc.recall[k]),
                    "f1": nan_to_none(lc.f1[k]),
                    "tp": int(lc.tp[k]),
                    "fp": int(lc.fp[k]),
                    "num_pos": int(lc.num_pos[k]),
                    "num_pred": int(lc.num_pred[k]),
                },
            }
        )

    box = _stats(bc)
    box["at_global_threshold"] = _clean(ev.box.counts_at_global(th.global_threshold).micro())
    box["all_detections"] = _clean(ev.box.counts_at_global(-np.inf).micro())
    label = _stats(lc)
    label["at_global_threshold"] = _clean(ev.label.counts_at_global(th.global_threshold).micro())
    label["all_detections"] = _clean(ev.label.counts_at_global(-np.inf).micro())

    if len(detections) == 0:
        warnings.append("no detections at all: AP is 0 for classes with GT, precision is undefined (n/a)")
    if ev.gt.num_images == 0:
        warnings.append("the evaluation ground truth has no images")
    n_dis = th.source.count("disabled")
    if n_dis:
        warnings.append(f"{n_dis} class(es) are never predicted at the tuned thresholds (no qualifying threshold)")

    headline = {k: nan_to_none(coco.stats[k]) for k in STAT_NAMES[:6]}
    for lvl, st in (("label", label), ("box", box)):
        for m in ("precision", "recall", "f1"):
            headline[f"{lvl}_{m}"] = st["micro"][m]

    report = {
        "schema_version": SCHEMA_VERSION,
        "num_images": ev.gt.num_images,
        "num_detections": len(detections),
        "num_detections_evaluated": len(d),
        "params": {"iou_threshold": float(iou_threshold), "max_dets": max_dets, "backend": coco.backend},
        "headline": headline,
        "coco": {k: nan_to_none(v) for k, v in coco.stats.items()},
        "coco_summary": coco.summary,
        "thresholds": {
            "criterion": th.criterion,
            "level": th.level,
            "target_precision": th.target_precision,
            "tuned_on_eval_split": bool(tuned_on_eval),
            "global_threshold": _thr_json(th.global_threshold),
            "num_tune_images": tune.gt.num_images,
            "num_tune_detections": len(tune.dets),
            "overlap_images": overlap,
            "sources": {s: th.source.count(s) for s in ("tuned", "global", "disabled")},
        },
        "box": box,
        "label": label,
        "per_class": per_class,
        "warnings": warnings,
    }
    return report, ev, th, coco


def _fmt(x: Any, nd: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if isinstance(x, float):
        return f"{x:.{nd}f}"
    return str(x)


def _thr_str(c: dict[str, Any]) -> str:
    if c["threshold"] is None:
        return "off"
    s = f"{c['threshold']:.3f}"
    return s + ("*" if c["threshold_source"] == "global" else "")


def render_markdown(report: dict[str, Any]) -> str:
    r, t, p = report, report["thresholds"], report["params"]
    out = ["# Detection evaluation report", ""]
    for w in r["warnings"]:
        out.append(f"> **Warning:** {w}")
        out.append("")
    tuned = "the evaluation split itself" if t["tuned_on_eval_split"] else f"a separate split of {t['num_tune_images']} images"
    crit = "max F1" if t["criterion"] == "f1" else f"lowest threshold with precision >= {t['target_precision']}"
    out += [
        f"- images: {r['num_images']}; detections: {r['num_detections']} "
        f"({r['num_detections_evaluated']} after keeping the top {p['max_dets']} per image)",
        f"- box matching: IoU >= {p['iou_threshold']}; COCO backend: {p['backend']}",
        f"- thresholds: one per class, {crit} at {t['level']} level, tuned on {tuned}; "
        f"global threshold {_fmt(t['global_threshold'])}",
        "",
        "## COCO metrics",
        "",
        "| " + " | ".join(STAT_NAMES[:6]) + " |",
        "|" + "---:|" * 6,
        "| " + " | ".join(_fmt(r["coco"][k]) for k in STAT_NAMES[:6]) + " |",
        "",
        "| " + " | ".join(STAT_NAMES[6:]) + " |",
        "|" + "---:|" * 6,
        "| " + " | ".join(_fmt(r["coco"][k]) for k in STAT_NAMES[6:]) + " |",
        "",
        "## At the tuned thresholds",
        "",
        "Label level: is the class in the image? Box level: is each box found (IoU match)?",
        "",
        "| level | average | precision | recall | F1 |",
        "|---|---|---:|---:|---:|",
    ]
    for lvl in ("label", "box"):
        for avg, name in (("micro", "micro"), ("macro", "macro"), ("at_global_threshold", "micro, global thr"),
                          ("all_detections", "micro, every detection")):
            s = r[lvl][avg]
            out.append(f"| {lvl} | {name} | {_fmt(s['precision'])} | {_fmt(s['recall'])} | {_fmt(s['f1'])} |")
    out += [
        "",
        "## Per class",
        "",
        "thr: score threshold (`*` global fallback: no positives to tune on; `off`: never predicted). "
        "n/a: undefined (no GT for recall, no predictions for precision).",
        "",
        "| class | AP | AP50 | thr | box P | box R | box F1 | #gt | #det | label P | label R | label F1 | #img+ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in r["per_class"]:
        b, lab = c["box"], c["label"]
        out.append(
            f"| {c['name']} | {_fmt(c['AP'])} | {_fmt(c['AP50'])} | {_thr_str(c)} | {_fmt(b['precision'])} | "
            f"{_fmt(b['recall'])} | {_fmt(b['f1'])} | {b['num_gt']} | {b['num_det']} | {_fmt(lab['precision'])} | "
            f"{_fmt(lab['recall'])} | {_fmt(lab['f1'])} | {lab['num_pos']} |"
        )
    for avg in ("micro", "macro"):
        b, lab = r["box"][avg], r["label"][avg]
        ap = r["coco"]["AP"] if avg == "macro" else None
        ap50 = r["coco"]["AP50"] if avg == "macro" else None
        out.append(
            f"| **{avg}** | {_fmt(ap) if ap is not None else ''} | {_fmt(ap50) if ap50 is not None else ''} | | "
            f"{_fmt(b['precision'])} | {_fmt(b['recall'])} | {_fmt(b['f1'])} | | | {_fmt(lab['precision'])} | "
            f"{_fmt(lab['recall'])} | {_fmt(lab['f1'])} | |"
        )
    out += ["", "## COCOeval summary", "", "```", r["coco_summary"].rstrip(), "```", ""]
    if r.get("figures"):
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]] + [""]
    return "\n".join(out)


CSV_COLUMNS = [
    "name", "cat_id", "AP", "AP50", "threshold", "threshold_source",
    "box_precision", "box_recall", "box_f1", "box_tp", "box_fp", "box_num_gt", "box_num_det",
    "label_precision", "label_recall", "label_f1", "label_tp", "label_fp", "label_num_pos", "label_num_pred",
]  # fmt: skip


def write_csv(path: Path, report: dict[str, Any]) -> None:
    with open(path, "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for c in report["per_class"]:
            row = {k: c[k] for k in ("name", "cat_id", "AP", "AP50", "threshold", "threshold_source")}
            for lvl in ("box", "label"):
                for k, v in c[lvl].items():
                    row[f"{lvl}_{k}"] = v
            # undefined -> empty cell (what pandas reads as NaN)
            w.writerow(["" if row.get(col) is None else row[col] for col in CSV_COLUMNS])


def evaluate_detections(
    coco_gt: COCO,
    detections: Sequence[dict[str, Any]],
    out_dir: Path | None = None,
    *,
    tune_gt: COCO | None = None,
    tune_detections: Sequence[dict[str, Any]] | None = None,
    iou_threshold: float = 0.5,
    criterion: str = "f1",
    target_precision: float | None = None,
    level: str = "label",
    max_dets: int | None = 100,
    backend: str = "pycocotools",
    image_root: Path | None = None,
    num_vis_images: int = 4,
    writer: Any = None,
    step: int | None = None,
) -> dict[str, float | None]:
    """Evaluate COCO result dicts against ``coco_gt`` and return the headline metrics
    (``HEADLINE_KEYS``; fractions in [0, 1], ``None`` where undefined).

    Thresholds are tuned on (``tune_gt``, ``tune_detections``) when given, else on the
    evaluation split itself (flagged in the report). With ``out_dir`` the report files are
    written there; with ``writer`` (``add_scalar``) and ``step`` the headline is logged as
    ``eval/<key>``.
    """
    report, ev, th, coco = build_report(
        coco_gt,
        detections,
        tune_gt=tune_gt,
        tune_detections=tune_detections,
        iou_threshold=iou_threshold,
        criterion=criterion,
        target_precision=target_precision,
        level=level,
        max_dets=max_dets,
        backend=backend,
    )
    for w in report["warnings"]:
        log.warning("evaluation: %s", w)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["figures"] = _write_figures(out, report, ev, th, coco_gt, image_root, num_vis_images)
        with open(out / "report.json", "w") as f:
            json.dump(report, f, indent=1, allow_nan=False)
        (out / "report.md").write_text(render_markdown(report))
        write_csv(out / "per_class.csv", report)
    headline = dict(report["headline"])
    if writer is not None and step is not None:
        for k, v in headline.items():
            if v is not None:
                writer.add_scalar(f"eval/{k}", v, step)
    return headline


def _write_figures(
    out: Path,
    report: dict[str, Any],
    ev: Prepared,
    th: Thresholds,
    coco_gt: COCO,
    image_root: Path | None,
    num_vis_images: int,
) -> list[str]:
    # figures are a convenience: a plotting failure must not lose the numbers
    from gn_detect.evaluation.figures import plot_examples, plot_pr_curves

    made = []
    try:
        ap = [c["AP"] for c in report["per_class"]]
        plot_pr_curves(out / "pr_curves.png", ev.gt.names, ev.box, ev.label, th.per_class, ap)
        made.append("pr_curves.png")
    except Exception as e:  # noqa: BLE001
        log.warning("pr_curves.png failed: %s", e)
        report["warnings"].append(f"pr_curves.png failed: {e}")
    if image_root is not None and num_vis_images > 0:
        try:
            names = {int(i): im.get("file_name", "") for i, im in coco_gt.imgs.items()}
            if plot_examples(out / "examples.png", Path(image_root), names, ev.gt, ev.matches, th.per_class,
                             num_vis_images):
                made.append("examples.png")
        except Exception as e:  # noqa: BLE001
            log.warning("examples.png failed: %s", e)
            report["warnings"].append(f"examples.png failed: {e}")
    return made
