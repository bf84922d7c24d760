"""Label precision/recall against its baseline: do the tuned thresholds beat "say every class
in every image"?

The *baseline* is the label-level result of predicting every class in every image, on the
images the thresholded numbers are counted on (the report images): per class c, precision p0_c
= positive pairs of c / non-ignored pairs of c (its frequency), recall 1, F1 2 p0_c / (1 + p0_c);
micro the same over all pairs. When every class is in most images the baseline is high (0.82
for 3 classes with 2 in each image) and a label P/R near it says nothing about the model. The
rules (docs/metrics.md, "Label metrics against their baseline"):

* **class rule** (exact): class c is predicted in every report image whose (image, c) pair is
  not ignored, and at least one of those images does not contain c (FP > 0). Its label
  precision is then exactly its frequency among those images.
* **micro rule** (within noise), whatever the share of pairs predicted: the micro label
  precision P = TP / n (n = TP + FP > 0) is not above the baseline p0 by more than two
  binomial standard errors, ``P <= p0 + 2 * sqrt(p0 * (1 - p0) / n)``; or p0 = 1 (every class
  in every image: nothing to beat). Not applied when n = 0 (precision undefined) or p0 = 0.
* **per class** (shown beside each class, not a warning by itself): the same test on the
  class's own counts and baseline.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from gn_detect.evaluation.events import Counts

__all__ = ["NOISE_SE", "baseline", "no_better", "predict_everything", "predict_everything_warning"]

NOISE_SE = 2.0  # standard errors of the micro and per-class rules


def baseline(num_pos: int, pairs: int) -> dict[str, float | None]:
    """Label precision/recall/F1 of predicting the class(es) in every one of ``pairs`` pairs."""
    if not pairs:
        return {"precision": None, "recall": None, "f1": None}
    p = num_pos / pairs
    return {"precision": p, "recall": 1.0 if num_pos else None, "f1": 2 * p / (1 + p)}


def no_better(tp: int, n: int, p0: float | None) -> tuple[bool, float | None]:
    """(precision tp / n within NOISE_SE binomial standard errors of the baseline ``p0``, or p0
    = 1; the margin). False where n = 0 or p0 is 0/None."""
    if not n or not p0:
        return False, None
    if p0 >= 1:
        return True, 0.0
    margin = NOISE_SE * math.sqrt(p0 * (1 - p0) / n)
    return tp / n <= p0 + margin, margin


def predict_everything(counts: Counts, pairs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Both rules on label ``counts`` at the tuned thresholds; ``pairs[c]`` = non-ignored
    (image, class c) pairs of the report images. Returns report.json's
    ``thresholds.predict_everything`` block."""
    pairs = np.asarray(pairs, dtype=np.int64)
    pred = counts.num_pred
    everywhere = (pred == pairs) & (counts.fp > 0)
    n, tp, n_pairs = int(pred.sum()), int(counts.tp.sum()), int(pairs.sum())
    npos = int(counts.num_pos.sum())
    base = baseline(npos, n_pairs)
    worse, margin = no_better(tp, n, base["precision"])
    per_class = [no_better(int(counts.tp[k]), int(pred[k]), baseline(int(counts.num_pos[k]), int(pairs[k]))["precision"])[0]
                 for k in range(len(pairs))]
    classes = [str(names[k]) for k in np.flatnonzero(everywhere)]
    return {
        "degenerate": bool(classes) or worse,
        "classes_predicted_everywhere": classes,
        "label_precision": tp / n if n else None,
        "baseline_precision": base["precision"],
        "baseline": base,
        "margin": margin,
        "precision_no_better_than_baseline": worse,
        "classes_no_better_than_baseline": [str(names[k]) for k in range(len(pairs)) if per_class[k]],
        "num_pred": n,
        "coverage": n / n_pairs if n_pairs else None,
    }


def predict_everything_warning(block: dict[str, Any], short: bool = False) -> str | None:
    """The warning of report.json/report.md (``short``: the console table's one line); None
    when neither rule fires."""
    if not block["degenerate"]:
        return None
    if short:
        why = []
        if block["precision_no_better_than_baseline"]:
            why.append(f"label precision {block['label_precision']:.3f} vs {block['baseline_precision']:.3f} "
                       "for every class in every image")
        if block["classes_predicted_everywhere"]:
            why.append("in every image: " + ", ".join(block["classes_predicted_everywhere"]))
        return f"tuned thresholds degenerate to 'predict everything' ({'; '.join(why)}); see report.md"
    parts = []
    if block["precision_no_better_than_baseline"]:
        parts.append(
            f"they predict {block['coverage']:.0%} of all (image, class) pairs and their label precision "
            f"({block['label_precision']:.3f}) is not above {block['baseline_precision']:.3f}, the precision of "
            f"predicting every class in every image, by more than {NOISE_SE:g} standard errors ({block['margin']:.3f})"
            if block["baseline_precision"] < 1 else
            "every class is in every image, so predicting every class everywhere is already perfect at label level"
        )
    if block["classes_predicted_everywhere"]:
        parts.append("predicted in every image, so their label precision is their frequency: "
                     + ", ".join(block["classes_predicted_everywhere"]))
    return ("tuned thresholds degenerate to 'predict everything': " + "; ".join(parts)
            + ". The label precision/recall describe no real operating point: train longer or check the data")
