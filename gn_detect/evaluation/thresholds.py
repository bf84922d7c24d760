"""Per-class (and one global) score thresholds chosen on a tuning split.

Candidates are the distinct scores of the tuning events (a threshold strictly between two
scores behaves like the higher one on the tuning data, so nothing else can win). Prediction
means score >= threshold.

* ``criterion="f1"``: the threshold with the highest F1; among equal F1 the *lowest*
  threshold (more recall for the same F1).
* ``criterion="precision"``: the lowest threshold whose precision is >= ``target_precision``
  (the most recall that still meets the target).

Fallbacks, recorded per class in ``source``:

* ``"global"``: the class has no positives on the tuning split, so there is no evidence to
  tune on; it gets the global threshold (tuned the same way on all classes pooled, micro).
* ``"disabled"``: the class has positives but no threshold gives F1 > 0 (the detector never
  finds it) or none reaches the target precision: the class is never predicted
  (threshold +inf internally, ``null`` in JSON, "off" in report.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from gn_detect.evaluation.events import Events, safe_div

__all__ = ["Thresholds", "tune_thresholds", "CRITERIA", "LEVELS"]

CRITERIA = ("f1", "precision")
LEVELS = ("label", "box")


@dataclass(frozen=True)
class Thresholds:
    per_class: np.ndarray  # (K,) float, +inf = never predicted
    source: list[str]  # per class: "tuned" | "global" | "disabled"
    global_threshold: float  # +inf = never predicted
    criterion: str
    target_precision: float | None = None
    level: str = "label"
    extra: dict = field(default_factory=dict)

    @classmethod
    def fixed(cls, value: float, num_classes: int, level: str = "label") -> "Thresholds":
        """One given threshold for every class (e.g. 0 for 'everything the model outputs')."""
        return cls(np.full(num_classes, float(value)), ["fixed"] * num_classes, float(value), "fixed", None, level)


def _select(events: Events, criterion: str, target: float | None) -> np.ndarray:
    """Best threshold per class of ``events``; NaN where no threshold qualifies."""
    K = events.num_classes
    out = np.full(K, np.nan)
    cls, thr, ctp, cfp = events.curves_flat()
    if len(cls) == 0:
        return out
    npos = events.num_pos[cls]
    if criterion == "f1":
        val = safe_div(2 * ctp, ctp + cfp + npos)
        val = np.where(np.isnan(val), -1.0, val)
        starts = np.r_[0, np.flatnonzero(cls[1:] != cls[:-1]) + 1]
        best = np.maximum.reduceat(val, starts)
        best_of = np.repeat(best, np.diff(np.r_[starts, len(cls)]))
        ok = (val == best_of) & (val > 0)
    else:
        ok = ctp >= target * (ctp + cfp)  # precision >= target without dividing
        ok &= (ctp + cfp) > 0
    idx = np.flatnonzero(ok)
    if len(idx) == 0:
        return out
    # thresholds decrease within a class: the last qualifying point is the lowest threshold
    last = np.r_[cls[idx][1:] != cls[idx][:-1], True]
    out[cls[idx][last]] = thr[idx][last]
    return out


def tune_thresholds(
    events: Events,
    criterion: str = "f1",
    target_precision: float | None = None,
    level: str = "label",
) -> Thresholds:
    """Tune one threshold per class and one global threshold on ``events`` (see module doc)."""
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {CRITERIA}, got {criterion!r}")
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    if criterion == "precision":
        if target_precision is None or not 0 < target_precision <= 1:
            raise ValueError("criterion='precision' needs 0 < target_precision <= 1")
    target = float(target_precision) if target_precision is not None else None

    pooled = Events(
        cls=np.zeros(len(events.cls), np.int64),
        score=events.score,
        is_tp=events.is_tp,
        num_pos=np.array([events.num_pos.sum()], np.int64),
    )
    g = _select(pooled, criterion, target)[0]
    global_thr = float(np.inf if np.isnan(g) else g)

    per = _select(events, criterion, target)
    source = []
    for k in range(events.num_classes):
        if events.num_pos[k] == 0:
            per[k] = global_thr
            source.append("global")
        elif np.isnan(per[k]):
            per[k] = np.inf
            source.append("disabled")
        else:
            source.append("tuned")
    return Thresholds(per, source, global_thr, criterion, target, level)
