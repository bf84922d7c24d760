"""The evaluation report: COCO AP plus precision/recall/F1 at tuned score thresholds.

``evaluate_detections`` is the entry point the engine calls; it writes report.json,
report.md, per_class.csv and figures into the run folder and returns the flat headline dict
that goes into metrics.jsonl. Definitions: docs/metrics.md; JSON layout: docs/report_schema.md.
"""

from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO

from gn_detect.evaluation.console import thresholded_images
from gn_detect.evaluation.coco_eval import DEFAULT_BACKEND, STAT_NAMES, CocoResult, coco_metrics_arrays
from gn_detect.evaluation.degenerate import NOISE_SE, baseline, predict_everything, predict_everything_warning
from gn_detect.evaluation.events import Counts, Events, nan_to_none
from gn_detect.evaluation.figures import plot_examples, plot_pr_curves
from gn_detect.evaluation.labels import label_pairs
from gn_detect.evaluation.matching import IGNORED, BoxMatches, DetArrays, GroundTruth, cap_per_image, match_boxes
from gn_detect.evaluation.split import split_image_ids
from gn_detect.evaluation.thresholds import Criterion, Thresholds, class_criteria_of, tune_thresholds
from gn_detect.io import atomic_open, write_json_atomic, write_text_atomic
from gn_detect.runs.layout import PR_CURVES, REPORT, REPORT_MD

__all__ = ["HEADLINE_KEYS", "SCHEMA_VERSION", "TUNE_MODES", "Parts", "Prepared", "prepare", "build_report",
           "evaluate_detections"]

log = logging.getLogger(__name__)

SCHEMA_VERSION = 1
TUNE_MODES = ("same", "half")
# the names sweeps read from metrics.jsonl: do not rename
HEADLINE_KEYS = (
    "AP", "AP50", "AP75", "APs", "APm", "APl",
    "label_precision", "label_recall", "label_f1",
    "box_precision", "box_recall", "box_f1",
    "label_baseline_precision", "label_baseline_recall", "label_baseline_f1", "label_degenerate",
)  # fmt: skip


@dataclass(frozen=True)
class Prepared:
    """One set of images, matched: GT arrays, capped detections, box matches and both event sets."""

    gt: GroundTruth
    dets: DetArrays
    kept: np.ndarray  # indices of the input detections that survived the per-image cap
    matches: BoxMatches
    box: Events
    label: Events

    def events(self, level: str) -> Events:
        return self.label if level == "label" else self.box

    def subset(self, image_ids: np.ndarray) -> "Prepared":
        """The same, restricted to ``image_ids`` (a subset of ``gt.image_ids``). Identical to
        ``prepare`` on those images alone, because the per-image cap, the box matching and the
        label pairs are all decided image by image; no detection is matched twice."""
        gt, d, m = self.gt, self.dets, self.matches
        keep = np.isin(gt.image_ids, image_ids)
        if int(keep.sum()) != len(np.unique(image_ids)):
            raise ValueError("subset: image ids that are not in this set")
        new_img = np.cumsum(keep) - 1
        g = keep[gt.img]
        new_row = np.cumsum(g) - 1
        sub_gt = GroundTruth(gt.image_ids[keep], gt.cat_ids, gt.names, new_img[gt.img[g]], gt.cls[g], gt.boxes[g],
                             gt.crowd[g], gt.ann_ids[g])
        k = keep[d.img]
        dets = DetArrays(new_img[d.img[k]], d.cls[k], d.boxes[k], d.scores[k])
        gi = m.gt_index[k]
        matches = BoxMatches(dets, m.status[k], np.where(gi >= 0, new_row[np.maximum(gi, 0)], -1), m.iou[k],
                             sub_gt.num_pos_boxes())
        return Prepared(sub_gt, dets, self.kept[k], matches, matches.events(), label_pairs(sub_gt, dets).events())


def prepare(
    coco_gt: COCO, detections: Sequence[dict[str, Any]], iou_threshold: float = 0.5, max_dets: int | None = 100
) -> Prepared:
    gt = GroundTruth.from_coco(coco_gt)
    all_dets = DetArrays.from_results(detections, gt)
    kept = cap_per_image(all_dets.img, all_dets.scores, max_dets)
    dets = all_dets.take(kept)
    matches = match_boxes(gt, dets, iou_threshold)
    return Prepared(gt, dets, kept, matches, matches.events(), label_pairs(gt, dets).events())


@dataclass(frozen=True)
class Parts:
    """Which images each number covers (docs/metrics.md, "Which images each number covers")."""

    full: Prepared  # the whole evaluation split: COCO AP and every threshold-free number
    tune: Prepared  # the thresholds are chosen here
    report: Prepared  # the numbers at those thresholds are counted here
    coverage: dict[str, Any]  # report.json's "coverage"
    overlap: int  # images in both tune and report
    tuned_on_report: bool  # the thresholded numbers are counted on the very images tuned on
    warnings: list[str]


def _parts(
    full: Prepared,
    tune: str,
    tune_seed: int,
    tune_gt: COCO | None,
    tune_detections: Sequence[dict[str, Any]] | None,
    iou_threshold: float,
    max_dets: int | None,
) -> Parts:
    """Split ``full`` into the images thresholds are tuned on and those they are reported on."""
    warnings: list[str] = []
    n = full.gt.num_images
    mode, seed = tune, None
    if tune_gt is not None:
        tuning, report, mode = prepare(tune_gt, tune_detections or [], iou_threshold, max_dets), full, "separate"
        if not np.array_equal(tuning.gt.cat_ids, full.gt.cat_ids):
            raise ValueError("tuning and evaluation ground truth have different category ids")
    elif tune == "half" and n >= 2:
        tune_ids, report_ids = split_image_ids(full.gt.image_ids, 0.5, tune_seed)
        tuning, report, seed = full.subset(tune_ids), full.subset(report_ids), int(tune_seed)
    else:
        if tune == "half":
            warnings.append(f"tune='half' needs at least 2 images, the split has {n}: thresholds were tuned and "
                            "reported on the same images")
        tuning = report = full
        mode = "same"
    overlap = int(np.intersect1d(tuning.gt.image_ids, report.gt.image_ids).size)
    same_images = tuning is report or np.array_equal(tuning.gt.image_ids, report.gt.image_ids)
    names = {"half": ("report half", "tuning half"), "separate": ("all", "separate tuning set")}
    subset, tuned_subset = names.get(mode, ("all", "all"))
    coverage = {
        "ap": {"images": n, "subset": "all"},
        "thresholded": {"images": report.gt.num_images, "subset": subset, "tuned_on": tuning.gt.num_images,
                        "tuned_on_subset": subset if same_images else tuned_subset, "tune": mode, "tune_seed": seed},
    }  # fmt: skip
    if same_images:
        warnings.append(
            "thresholds were tuned on the evaluation split itself: precision/recall/F1 at the tuned thresholds are "
            "optimistic; use tune='half' (eval.tune=half) or a separate tuning split for honest numbers"
        )
    elif overlap:
        warnings.append(f"the tuning and evaluation splits share {overlap} images: the thresholds saw part of the "
                        "evaluation data")
    return Parts(full, tuning, report, coverage, overlap, bool(same_images), warnings)


def _stats(counts: Counts) -> dict[str, Any]:
    return {"micro": _clean(counts.micro()), "macro": _clean(counts.macro())}


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (nan_to_none(v) if isinstance(v, float) else v) for k, v in d.items()}


def _thr_json(t: float) -> float | None:
    return None if not np.isfinite(t) else float(t)


def _check_args(level: str, iou_threshold: float, tune: str, tune_gt: COCO | None,
                tune_detections: Sequence[dict[str, Any]] | None) -> None:
    if level not in ("label", "box"):
        raise ValueError(f"level must be 'label' or 'box', got {level!r}")
    if not 0 < iou_threshold <= 1:
        raise ValueError("iou_threshold must be in (0, 1]")
    if tune not in TUNE_MODES:
        raise ValueError(f"tune must be one of {TUNE_MODES}, got {tune!r}: 'half' tunes the thresholds on a seeded "
                         "half of the split and reports on the other, 'same' tunes and reports on every image")
    if (tune_gt is None) != (tune_detections is None):
        raise ValueError("give both tune_gt and tune_detections, or neither")
    if tune_gt is not None and tune == "half":
        raise ValueError("tune='half' splits the evaluation split itself; with a separate tuning set (tune_gt) "
                         "leave tune='same'")


def _level_tables(parts: Parts, th: Thresholds, level: str) -> tuple[dict[str, Any], Counts]:
    """The report's ``box`` or ``label`` block and its per-class counts at the tuned thresholds:
    thresholded numbers on the report images, ``all_detections`` (threshold-free) on all."""
    ev = parts.report.events(level)
    counts = ev.counts_at(th.per_class)
    out = _stats(counts)
    out["at_global_threshold"] = _clean(ev.counts_at_global(th.global_threshold).micro())
    out["all_detections"] = _clean(parts.full.events(level).counts_at_global(-np.inf).micro())
    return out, counts


def build_report(
    coco_gt: COCO,
    detections: Sequence[dict[str, Any]],
    *,
    tune: str,
    tune_seed: int = 0,
    tune_gt: COCO | None = None,
    tune_detections: Sequence[dict[str, Any]] | None = None,
    iou_threshold: float = 0.5,
    criterion: str = "f1",
    target_precision: float | None = None,
    target_recall: float | None = None,
    class_criteria: Mapping[str, Mapping[str, Any]] | None = None,
    level: str = "label",
    max_dets: int | None = 100,
    backend: str = DEFAULT_BACKEND,
) -> tuple[dict[str, Any], Parts, Thresholds, CocoResult]:
    """Everything ``evaluate_detections`` writes, without writing: (report, the image sets
    each number covers, thresholds, COCO result). Arguments: see ``evaluate_detections``;
    ``class_criteria``: {class name: {criterion, target_precision, target_recall}}
    (gn_detect/evaluation/thresholds.py)."""
    _check_args(level, iou_threshold, tune, tune_gt, tune_detections)
    full = prepare(coco_gt, detections, iou_threshold, max_dets)
    d, gt = full.dets, full.gt
    own = class_criteria_of(class_criteria, gt.names)  # a misspelt class: one line, before COCOeval
    coco = coco_metrics_arrays(coco_gt, gt.image_ids[d.img], gt.cat_ids[d.cls], d.boxes, d.scores, backend=backend)
    parts = _parts(full, tune, tune_seed, tune_gt, tune_detections, iou_threshold, max_dets)
    th = tune_thresholds(parts.tune.events(level), criterion, target_precision, level, target_recall=target_recall,
                         class_criteria=own)
    box, bc = _level_tables(parts, th, "box")
    label, lc = _level_tables(parts, th, "label")

    warnings = list(parts.warnings)
    if len(detections) == 0:
        warnings.append("no detections at all: AP is 0 for classes with GT, precision is undefined (n/a)")
    if gt.num_images == 0:
        warnings.append("the evaluation ground truth has no images")
    n_dis = th.source.count("disabled")
    if n_dis:
        warnings.append(f"{n_dis} class(es) are never predicted at the tuned thresholds (no qualifying threshold)")
    pairs = _label_pairs_per_class(parts.report)
    everything = predict_everything(lc, pairs, gt.names)
    label["baseline"] = everything["baseline"]
    if (w := predict_everything_warning(everything)) is not None:
        warnings.append(w)

    headline = {k: nan_to_none(coco.stats[k]) for k in STAT_NAMES[:6]}
    for lvl, st in (("label", label), ("box", box)):
        for m in ("precision", "recall", "f1"):
            headline[f"{lvl}_{m}"] = st["micro"][m]
    for m in ("precision", "recall", "f1"):
        headline[f"label_baseline_{m}"] = everything["baseline"][m]
    headline["label_degenerate"] = everything["degenerate"]

    report = {
        "schema_version": SCHEMA_VERSION,
        "num_images": gt.num_images,
        "num_detections": len(detections),
        "num_detections_evaluated": len(d),
        "coverage": parts.coverage,
        "params": {"iou_threshold": float(iou_threshold), "max_dets": max_dets, "backend": coco.backend},
        "headline": headline,
        "coco": {k: nan_to_none(v) for k, v in coco.stats.items()},
        "coco_summary": coco.summary,
        "thresholds": _thresholds_block(th, parts, gt.names, everything),
        "box": box,
        "label": label,
        "per_class": _per_class_rows(parts.report, th, coco, bc, lc, pairs, everything),
        "warnings": warnings,
    }
    return report, parts, th, coco


def _thresholds_block(th: Thresholds, parts: Parts, names: Sequence[str], everything: dict[str, Any]) -> dict[str, Any]:
    """report.json's ``thresholds`` (docs/report_schema.md)."""
    return {
        "criterion": th.criterion,
        "level": th.level,
        "target_precision": th.target_precision,
        "target_recall": th.target_recall,
        "class_criteria": {names[k]: c.record() for k, c in sorted(th.class_criteria.items())},
        "tuned_on_eval_split": parts.tuned_on_report,
        "global_threshold": _thr_json(th.global_threshold),
        "num_tune_images": parts.tune.gt.num_images,
        "num_tune_detections": len(parts.tune.dets),
        "overlap_images": parts.overlap,
        "sources": {s: th.source.count(s) for s in ("tuned", "global", "disabled")},
        "predict_everything": everything,
    }


def _label_pairs_per_class(prep: Prepared) -> np.ndarray:
    """Per class, the (image, class) pairs of ``prep``'s images that count at label level:
    every image except those where the class is crowd-only (ignored)."""
    K = prep.gt.num_classes
    ignored = label_pairs(prep.gt, prep.dets).ignored_keys
    return prep.gt.num_images - np.bincount(ignored % max(K, 1), minlength=K)[:K]


def _per_class_rows(ev: Prepared, th: Thresholds, coco: CocoResult, bc: Counts, lc: Counts, pairs: np.ndarray,
                    everything: dict[str, Any]) -> list[dict[str, Any]]:
    """The report's ``per_class`` entries (docs/report_schema.md)."""
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
                "criterion": th.class_criteria[k].record() if k in th.class_criteria else None,
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
                    "baseline": baseline(int(lc.num_pos[k]), int(pairs[k])),
                    "no_better_than_baseline": ev.gt.names[k] in everything["classes_no_better_than_baseline"],
                },
            }
        )
    return per_class


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


def _coverage_lines(report: dict[str, Any]) -> list[str]:
    """report.md's statement of which images each number covers."""
    ap, at = report["coverage"]["ap"], thresholded_images(report["coverage"]["thresholded"])
    return [
        f"- COCO metrics, per-class AP / AP50, the 'every detection' rows and the PR curves: all {ap['images']} "
        "images of the split",
        f"- everything at the tuned thresholds (precision, recall, F1, their counts, the rest of the per-class "
        f"table): {at}",
    ]


def _per_class_md(r: dict[str, Any]) -> list[str]:
    """report.md's per-class table header and one row per class (the averages follow)."""
    out = [
        "",
        "## Per class",
        "",
        "thr: score threshold (`*` global fallback: no positives to tune on; `off`: never predicted). "
        "n/a: undefined (no GT for recall, no predictions for precision). base P/F1: label precision/F1 of "
        f"predicting the class in every image (recall 1); `~` after label P: within {NOISE_SE:g} standard errors "
        "of base P (degenerate for that class).",
        "",
        "| class | AP | AP50 | thr | box P | box R | box F1 | #gt | #det | label P | label R | label F1 | base P | "
        "base F1 | #img+ |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for c in r["per_class"]:
        b, lab = c["box"], c["label"]
        base = lab.get("baseline", {})
        mark = " ~" if lab.get("no_better_than_baseline") else ""
        out.append(
            f"| {c['name']} | {_fmt(c['AP'])} | {_fmt(c['AP50'])} | {_thr_str(c)} | {_fmt(b['precision'])} | "
            f"{_fmt(b['recall'])} | {_fmt(b['f1'])} | {b['num_gt']} | {b['num_det']} | {_fmt(lab['precision'])}{mark} | "
            f"{_fmt(lab['recall'])} | {_fmt(lab['f1'])} | {_fmt(base.get('precision'))} | {_fmt(base.get('f1'))} | "
            f"{lab['num_pos']} |"
        )
    return out


def render_markdown(report: dict[str, Any]) -> str:
    r, t, p = report, report["thresholds"], report["params"]
    out = ["# Detection evaluation report", ""]
    for w in r["warnings"]:
        out.append(f"> **Warning:** {w}")
        out.append("")
    crit = Criterion(t["criterion"], t.get("target_precision") or t.get("target_recall")).text()
    if t.get("class_criteria"):
        crit += " (" + "; ".join(f"{name}: {Criterion.of(**c).text()}" for name, c in t["class_criteria"].items()) + ")"
    out += [
        f"- images: {r['num_images']}; detections: {r['num_detections']} "
        f"({r['num_detections_evaluated']} after keeping the top {p['max_dets']} per image)",
        *_coverage_lines(r),
        f"- box matching: IoU >= {p['iou_threshold']}; COCO backend: {p['backend']}",
        f"- thresholds: one per class, {crit} at {t['level']} level; global threshold {_fmt(t['global_threshold'])}",
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
        if lvl == "label" and "baseline" in r["label"]:
            b = r["label"]["baseline"]
            out.append(f"| label | baseline: every class in every image | {_fmt(b['precision'])} | "
                       f"{_fmt(b['recall'])} | {_fmt(b['f1'])} |")
    pe = t.get("predict_everything", {})
    if pe.get("degenerate"):
        out += ["", "**Label level is degenerate**: the tuned label precision does not beat the baseline above "
                f"by more than {NOISE_SE:g} standard errors (or a class is predicted in every image); read box level "
                "and AP instead (docs/metrics.md, \"Label metrics against their baseline\")."]
    out += _per_class_md(r)
    for avg in ("micro", "macro"):
        b, lab = r["box"][avg], r["label"][avg]
        ap = r["coco"]["AP"] if avg == "macro" else None
        ap50 = r["coco"]["AP50"] if avg == "macro" else None
        out.append(
            f"| **{avg}** | {_fmt(ap) if ap is not None else ''} | {_fmt(ap50) if ap50 is not None else ''} | | "
            f"{_fmt(b['precision'])} | {_fmt(b['recall'])} | {_fmt(b['f1'])} | | | {_fmt(lab['precision'])} | "
            f"{_fmt(lab['recall'])} | {_fmt(lab['f1'])} | | | |"
        )
    out += ["", "## COCOeval summary", "", "```", r["coco_summary"].rstrip(), "```", ""]
    if r.get("figures"):
        out += ["## Figures", ""] + [f"![{f}]({f})" for f in r["figures"]] + [""]
    return "\n".join(out)


CSV_COLUMNS = [
    "name", "cat_id", "AP", "AP50", "threshold", "threshold_source",
    "box_precision", "box_recall", "box_f1", "box_tp", "box_fp", "box_num_gt", "box_num_det",
    "label_precision", "label_recall", "label_f1", "label_tp", "label_fp", "label_num_pos", "label_num_pred",
    "label_baseline_precision", "label_baseline_f1", "label_no_better_than_baseline",
]  # fmt: skip


def write_csv(path: Path, report: dict[str, Any]) -> None:
    with atomic_open(path, newline="") as f:
        w = csv.writer(f)
        w.writerow(CSV_COLUMNS)
        for c in report["per_class"]:
            row = {k: c[k] for k in ("name", "cat_id", "AP", "AP50", "threshold", "threshold_source")}
            for lvl in ("box", "label"):
                for k, v in c[lvl].items():
                    row[f"{lvl}_{k}"] = v
            for k, v in c["label"].get("baseline", {}).items():
                row[f"label_baseline_{k}"] = v
            # undefined -> empty cell (what pandas reads as NaN)
            w.writerow(["" if row.get(col) is None else row[col] for col in CSV_COLUMNS])


def evaluate_detections(
    coco_gt: COCO,
    detections: Sequence[dict[str, Any]],
    out_dir: Path | None = None,
    *,
    image_root: Path | None = None,
    num_vis_images: int = 4,
    figures: bool = True,
    writer: Any = None,
    step: int | None = None,
    **report_opts: Any,
) -> dict[str, float | None]:
    """Evaluate COCO result dicts against ``coco_gt`` (the whole evaluation split) and return
    the headline metrics (``HEADLINE_KEYS``; fractions in [0, 1], ``None`` where undefined).

    COCO AP and every threshold-free number cover all images of ``coco_gt``. The per-class
    thresholds are tuned, and the numbers at them counted, according to ``tune``:
    ``"half"``: tuned on a ``tune_seed``-seeded half of the images (``split_image_ids``) and
    counted on the other half; ``"same"``: tuned and counted on every image (optimistic,
    flagged in the report). A separate tuning set (``tune_gt``, ``tune_detections``) replaces
    both: tuned there, counted on every image of ``coco_gt``. report.json's ``coverage`` says
    which images each number covers. With ``out_dir`` the report files are written there
    (``figures=False``: without the PNGs); with ``writer`` (``add_scalar``) and ``step`` the
    headline is logged as ``eval/<key>``. ``report_opts`` are :func:`build_report`'s keyword
    arguments (``tune`` required).
    """
    report, parts, th, coco = build_report(coco_gt, detections, **report_opts)
    for w in report["warnings"]:
        log.warning("evaluation: %s", w)
    if out_dir is not None:
        out = Path(out_dir)
        out.mkdir(parents=True, exist_ok=True)
        report["figures"] = _write_figures(out, report, parts, th, coco_gt, image_root, num_vis_images) if figures else []
        write_json_atomic(out / REPORT, report, indent=1)
        write_text_atomic(out / REPORT_MD, render_markdown(report))  # rewritten by each evaluation
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
    parts: Parts,
    th: Thresholds,
    coco_gt: COCO,
    image_root: Path | None,
    num_vis_images: int,
) -> list[str]:
    # figures are a convenience: a plotting failure must not lose the numbers. PR curves are
    # threshold-free (all images); the operating points and the example images show the
    # thresholded decisions, so they come from the report images.
    made = []
    ev, full = parts.report, parts.full
    try:
        ap = [c["AP"] for c in report["per_class"]]
        points = (ev.box.counts_at(th.per_class), ev.label.counts_at(th.per_class))
        plot_pr_curves(out / PR_CURVES, full.gt.names, full.box, full.label, th.per_class, ap, points=points)
        made.append(PR_CURVES)
    except Exception as e:  # noqa: BLE001
        log.warning("%s failed: %s", PR_CURVES, e)
        report["warnings"].append(f"{PR_CURVES} failed: {e}")
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
