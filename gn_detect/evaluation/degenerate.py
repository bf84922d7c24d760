"""The "predict everything" check: do the tuned thresholds give a real operating point?

When a detector cannot yet tell the classes apart, F1-tuning often picks the lowest threshold
of a class, so the class is predicted in every image and its label precision is just its
frequency. The numbers at the tuned thresholds then describe "say every class everywhere", not
the model. Two rules, both at label level on the images the thresholded numbers are counted on
(the report images), with the label counts at the tuned thresholds (docs/metrics.md,
"Degenerate thresholds"):

* **class rule** (exact): class c is predicted in every report image whose (image, c) pair is
  not ignored, and at least one of those images does not contain c (FP > 0). Its label
  precision is then exactly its frequency among those images.
* **micro rule** (within noise): the tuned thresholds predict at least 80% of all non-ignored
  (image, class) pairs (n = TP + FP >= 0.8 x pairs), and the micro label precision P = TP / n
  is not above the *baseline* p0, the precision of predicting every class in every image
  (positive pairs / non-ignored pairs), by more than two binomial standard errors:
  ``P <= p0 + 2 * sqrt(p0 * (1 - p0) / n)``. Not applied when n = 0 (precision undefined) or
  p0 is 0 or 1 (nothing to beat, or nothing to get wrong).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from gn_detect.evaluation.events import Counts

__all__ = ["MIN_COVERAGE", "NOISE_SE", "predict_everything", "predict_everything_warning"]

NOISE_SE = 2.0  # standard errors of the micro rule
MIN_COVERAGE = 0.8  # share of the (image, class) pairs the micro rule needs predicted


def predict_everything(counts: Counts, pairs: np.ndarray, names: Sequence[str]) -> dict[str, Any]:
    """Both rules on label ``counts`` at the tuned thresholds; ``pairs[c]`` = non-ignored
    (image, class c) pairs of the report images. Returns report.json's
    ``thresholds.predict_everything`` block."""
    pairs = np.asarray(pairs, dtype=np.int64)
    pred = counts.num_pred
    everywhere = (pred == pairs) & (counts.fp > 0)
    n, tp, n_pairs = int(pred.sum()), int(counts.tp.sum()), int(pairs.sum())
    npos = int(counts.num_pos.sum())
    precision = tp / n if n else None
    baseline = npos / n_pairs if n_pairs else None
    coverage = n / n_pairs if n_pairs else None
    margin = None
    no_better = False
    if precision is not None and baseline is not None and 0 < baseline < 1:
        margin = NOISE_SE * math.sqrt(baseline * (1 - baseline) / n)
        no_better = coverage >= MIN_COVERAGE and precision <= baseline + margin
    classes = [str(names[k]) for k in np.flatnonzero(everywhere)]
    return {
        "degenerate": bool(classes) or no_better,
        "classes_predicted_everywhere": classes,
        "label_precision": precision,
        "baseline_precision": baseline,
        "margin": margin,
        "precision_no_better_than_baseline": no_better,
        "num_pred": n,
        "coverage": coverage,
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
        )
    if block["classes_predicted_everywhere"]:
        parts.append("predicted in every image, so their label precision is their frequency: "
                     + ", ".join(block["classes_predicted_everywhere"]))
    return ("tuned thresholds degenerate to 'predict everything': " + "; ".join(parts)
            + ". The label precision/recall describe no real operating point: train longer or check the data")
