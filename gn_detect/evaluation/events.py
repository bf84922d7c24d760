"""Scored events: the common currency of box-level and label-level metrics.

Both levels reduce to the same thing: per class, a list of scored "predictions", each either
a true positive or a false positive, plus the number of positives a perfect predictor would
find. A prediction is *made* at score threshold ``t`` when its score is ``>= t``.

* box level: one event per detection that was not matched to a crowd region
  (``is_tp`` = matched a non-crowd GT box); positives = non-crowd GT boxes.
* label level: one event per (image, class) pair that has at least one detection and is not
  crowd-only; score = the highest detection score of that class in that image;
  ``is_tp`` = the class is present (non-crowd) in the image; positives = such pairs.

Undefined ratios are NaN inside the arrays and ``None`` once serialized (see ``nan_to_none``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

__all__ = ["Events", "PRCurve", "Counts", "safe_div", "f1_from_counts", "nan_to_none"]


def safe_div(num: np.ndarray | float, den: np.ndarray | float) -> np.ndarray:
    """num / den with NaN where den == 0 (undefined, never silently 0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.full(np.broadcast(num, den).shape, np.nan)
    np.divide(num, den, out=out, where=den != 0)
    return out


def f1_from_counts(tp: np.ndarray, fp: np.ndarray, num_pos: np.ndarray) -> np.ndarray:
    """F1 = 2TP / (2TP + FP + FN): the harmonic mean of P and R whenever both exist, and
    still defined (0) when one of them is undefined but something went wrong (no predictions
    for a present class, or predictions for an absent class). NaN only when there are neither
    positives nor predictions."""
    tp = np.asarray(tp, dtype=np.float64)
    fn = np.asarray(num_pos, dtype=np.float64) - tp
    return safe_div(2 * tp, 2 * tp + np.asarray(fp, dtype=np.float64) + fn)


def nan_to_none(x: float | None) -> float | None:
    """JSON has no NaN: undefined metrics are written as null."""
    if x is None:
        return None
    x = float(x)
    return None if math.isnan(x) or math.isinf(x) else x


class _Rates:
    """Precision, recall and F1 from ``tp``, ``fp`` and ``num_pos`` (undefined ratios are NaN)."""

    tp: np.ndarray
    fp: np.ndarray
    num_pos: np.ndarray | int

    @property
    def precision(self) -> np.ndarray:
        return safe_div(self.tp, self.tp + self.fp)

    @property
    def recall(self) -> np.ndarray:
        return safe_div(self.tp, self.num_pos)

    @property
    def f1(self) -> np.ndarray:
        return f1_from_counts(self.tp, self.fp, self.num_pos)


@dataclass(frozen=True)
class Counts(_Rates):
    """Per-class counts and ratios at a set of per-class thresholds (arrays of length K)."""

    tp: np.ndarray
    fp: np.ndarray
    num_pos: np.ndarray

    @property
    def num_pred(self) -> np.ndarray:
        return self.tp + self.fp

    def micro(self) -> dict[str, float]:
        """Pool the counts of all classes, then take the ratios."""
        tp, fp, npos = self.tp.sum(), self.fp.sum(), self.num_pos.sum()
        return {
            "precision": float(safe_div(tp, tp + fp)),
            "recall": float(safe_div(tp, npos)),
            "f1": float(f1_from_counts(tp, fp, npos)),
            "tp": int(tp),
            "fp": int(fp),
            "num_pos": int(npos),
        }

    def macro(self) -> dict[str, float]:
        """Mean of the per-class ratios over the classes where each ratio is defined; the
        number of classes that entered each mean is reported next to it."""
        out: dict[str, float] = {}
        for name, vals in (("precision", self.precision), ("recall", self.recall), ("f1", self.f1)):
            ok = ~np.isnan(vals)
            out[name] = float(vals[ok].mean()) if ok.any() else float("nan")
            out[f"num_classes_{name}"] = int(ok.sum())
        return out


@dataclass(frozen=True)
class PRCurve(_Rates):
    """Operating points of one class, one per distinct score (ties cannot be split by a
    threshold), ordered by decreasing threshold."""

    thresholds: np.ndarray
    tp: np.ndarray
    fp: np.ndarray
    num_pos: int


@dataclass(frozen=True)
class Events:
    """Scored TP/FP events of K classes: ``cls`` (index 0..K-1), ``score``, ``is_tp``;
    ``num_pos[k]`` positives of class k."""

    cls: np.ndarray
    score: np.ndarray
    is_tp: np.ndarray
    num_pos: np.ndarray

    @property
    def num_classes(self) -> int:
        return len(self.num_pos)

    def _sorted(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        # class ascending, score descending; the order among equal scores is irrelevant
        # because curves only keep the last point of each tie block.
        order = np.lexsort((-self.score, self.cls))
        return self.cls[order], self.score[order], self.is_tp[order]

    def curves_flat(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """All classes' operating points at once: (cls, threshold, cum_tp, cum_fp), grouped by
        class, thresholds decreasing within a class. Vectorized: used by the tuner."""
        cls, score, tp = self._sorted()
        n = len(cls)
        if n == 0:
            e = np.zeros(0)
            return e.astype(np.int64), e, e.astype(np.int64), e.astype(np.int64)
        tp_i = tp.astype(np.int64)
        ctp = np.cumsum(tp_i)
        cfp = np.cumsum(1 - tp_i)
        new_cls = np.r_[True, cls[1:] != cls[:-1]]
        start = np.flatnonzero(new_cls)
        # subtract the running totals reached before each class starts
        base = np.repeat(np.r_[0, start[1:]], np.diff(np.r_[start, n]))
        ctp_before = np.r_[0, ctp][base]
        cfp_before = np.r_[0, cfp][base]
        ctp = ctp - ctp_before
        cfp = cfp - cfp_before
        last_of_tie = np.r_[(cls[1:] != cls[:-1]) | (score[1:] != score[:-1]), True]
        return cls[last_of_tie], score[last_of_tie], ctp[last_of_tie], cfp[last_of_tie]

    def curve(self, k: int) -> PRCurve:
        m = self.cls == k
        s = self.score[m]
        t = self.is_tp[m].astype(np.int64)
        order = np.argsort(-s, kind="stable")
        s, t = s[order], t[order]
        ctp, cfp = np.cumsum(t), np.cumsum(1 - t)
        last = np.r_[s[1:] != s[:-1], True] if len(s) else np.zeros(0, bool)
        return PRCurve(s[last], ctp[last], cfp[last], int(self.num_pos[k]))

    def counts_at(self, thresholds: np.ndarray) -> Counts:
        """Counts when class k predicts every event with score >= thresholds[k]
        (NaN or +inf threshold: class never predicted)."""
        thr = np.asarray(thresholds, dtype=np.float64)
        thr = np.where(np.isnan(thr), np.inf, thr)
        keep = self.score >= thr[self.cls] if len(self.cls) else np.zeros(0, bool)
        k = self.num_classes
        tp = np.bincount(self.cls[keep & self.is_tp], minlength=k).astype(np.int64)
        fp = np.bincount(self.cls[keep & ~self.is_tp], minlength=k).astype(np.int64)
        return Counts(tp, fp, self.num_pos.astype(np.int64))

    def counts_at_global(self, threshold: float | None) -> Counts:
        t = np.inf if threshold is None else float(threshold)
        return self.counts_at(np.full(self.num_classes, t))
