"""Per-class (and one global) score thresholds chosen on a tuning split.

Candidates are the distinct scores of the tuning events (a threshold strictly between two
scores behaves like the higher one on the tuning data, so nothing else can win). Prediction
means score >= threshold.

* ``criterion="f1"``: the threshold with the highest F1; among equal F1 the *lowest*
  threshold (more recall for the same F1).
* ``criterion="precision"``: the lowest threshold whose precision is >= ``target_precision``
  (the most recall that still meets the target).
* ``criterion="recall"``: precision at a recall floor: among the thresholds whose recall is >=
  ``target_recall``, the one with the highest precision; among equal precision the lowest.

Each class may have a criterion of its own (``class_criteria``, the config's
``eval.class_criteria: {class name: {criterion, target_precision, target_recall}}``); the others
and the global threshold use the global one.

Fallbacks, recorded per class in ``source``:

* ``"global"``: the class has no positives on the tuning split, so there is no evidence to
  tune on; it gets the global threshold (tuned the same way on all classes pooled, micro).
* ``"disabled"``: the class has positives but no threshold gives F1 > 0 (the detector never
  finds it) or none reaches the target precision or recall: the class is never predicted
  (threshold +inf internally, ``null`` in JSON, "off" in report.md).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from gn_detect.config.schema import CHOICES, CRITERION_TARGETS
from gn_detect.evaluation.events import Events, safe_div

__all__ = ["CRITERIA", "LEVELS", "Criterion", "Thresholds", "class_criteria_of", "tune_thresholds"]

CRITERIA = CHOICES["eval.criterion"]
LEVELS = CHOICES["eval.level"]


@dataclass(frozen=True)
class Criterion:
    """How a threshold is chosen (module doc): ``name`` one of CRITERIA, ``target`` the precision
    (``precision``) or the recall floor (``recall``); None for ``f1``."""

    name: str = "f1"
    target: float | None = None

    @classmethod
    def of(cls, criterion: str = "f1", target_precision: float | None = None,
           target_recall: float | None = None, where: str = "criterion") -> "Criterion":
        """The criterion of the config's keys (``where`` names them in the one-line error)."""
        if criterion not in CRITERIA:
            raise ValueError(f"{where}: {criterion!r} is not one of {', '.join(CRITERIA)}")
        if criterion == "f1":
            return cls()
        key = CRITERION_TARGETS[criterion]
        target = target_precision if criterion == "precision" else target_recall
        if target is None or not 0 < target <= 1:
            raise ValueError(f"{where}: criterion {criterion} needs 0 < {key} <= 1, got {target}; e.g. {key}=0.9")
        return cls(criterion, float(target))

    def text(self) -> str:
        """How report.md says it."""
        if self.name == "f1":
            return "max F1"
        if self.name == "precision":
            return f"lowest threshold with precision >= {self.target:g}"
        if self.name == "recall":
            return f"highest precision at recall >= {self.target:g}"
        return self.name

    def record(self) -> dict:
        """What report.json says (``criterion`` and its target key)."""
        return {"criterion": self.name} | ({CRITERION_TARGETS[self.name]: self.target} if self.name != "f1" else {})


def class_criteria_of(spec: Mapping[str, Mapping[str, Any]] | None, names: Sequence[str]) -> dict[int, Criterion]:
    """{class index: its criterion} of ``eval.class_criteria`` ({class name: {criterion,
    target_precision, target_recall}}); a name that is not one of ``names`` or a bad entry is one
    ValueError line naming the key and the fix."""
    spec = dict(spec or {})
    index = {str(n): k for k, n in enumerate(names)}
    if unknown := [n for n in spec if str(n) not in index]:
        raise ValueError(f"eval.class_criteria: {unknown} are not classes of the data ({list(index)[:20]}); check "
                         "their spelling (the category names of the json)")
    return {index[str(n)]: Criterion.of(e.get("criterion", "f1"), e.get("target_precision"), e.get("target_recall"),
                                        where=f"eval.class_criteria.{n}") for n, e in spec.items()}


@dataclass(frozen=True)
class Thresholds:
    per_class: np.ndarray  # (K,) float, +inf = never predicted
    source: list[str]  # per class: "tuned" | "global" | "disabled"
    global_threshold: float  # +inf = never predicted
    criterion: str
    target_precision: float | None = None
    level: str = "label"
    extra: dict = field(default_factory=dict)
    target_recall: float | None = None
    class_criteria: dict[int, Criterion] = field(default_factory=dict)  # classes tuned by a criterion of their own


    @classmethod
    def fixed(cls, value: float, num_classes: int, level: str = "label") -> "Thresholds":
        """One given threshold for every class (e.g. 0 for 'everything the model outputs')."""
        return cls(np.full(num_classes, float(value)), ["fixed"] * num_classes, float(value), "fixed", None, level)


def _best(cls: np.ndarray, val: np.ndarray) -> np.ndarray:
    """Where ``val`` reaches its per-class maximum (``cls`` sorted, runs of one class)."""
    starts = np.r_[0, np.flatnonzero(cls[1:] != cls[:-1]) + 1]
    best = np.maximum.reduceat(val, starts)
    return val == np.repeat(best, np.diff(np.r_[starts, len(cls)]))


def _select(events: Events, criterion: Criterion) -> np.ndarray:
    """Best threshold per class of ``events``; NaN where no threshold qualifies."""
    K = events.num_classes
    out = np.full(K, np.nan)
    cls, thr, ctp, cfp = events.curves_flat()
    if len(cls) == 0:
        return out
    npos = events.num_pos[cls]
    target = criterion.target
    if criterion.name == "f1":
        val = safe_div(2 * ctp, ctp + cfp + npos)
        val = np.where(np.isnan(val), -1.0, val)
        ok = _best(cls, val) & (val > 0)
    elif criterion.name == "precision":
        ok = ctp >= target * (ctp + cfp)  # precision >= target without dividing
        ok &= (ctp + cfp) > 0
    else:  # recall >= target without dividing; the most precise of those
        floor = (ctp >= target * npos) & (npos > 0) & ((ctp + cfp) > 0)
        val = np.where(floor, safe_div(ctp, ctp + cfp), -1.0)
        ok = floor & _best(cls, val)
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
    *,
    target_recall: float | None = None,
    class_criteria: Mapping[int, Criterion] | None = None,
) -> Thresholds:
    """Tune one threshold per class and one global threshold on ``events`` (see module doc);
    ``class_criteria``: {class index: criterion} replacing the global criterion for those classes
    (:func:`class_criteria_of` makes it from the config's class names)."""
    if level not in LEVELS:
        raise ValueError(f"level must be one of {LEVELS}, got {level!r}")
    crit = Criterion.of(criterion, target_precision, target_recall)
    own = dict(class_criteria or {})

    pooled = Events(
        cls=np.zeros(len(events.cls), np.int64),
        score=events.score,
        is_tp=events.is_tp,
        num_pos=np.array([events.num_pos.sum()], np.int64),
    )
    g = _select(pooled, crit)[0]
    global_thr = float(np.inf if np.isnan(g) else g)

    per = _select(events, crit)
    for c in set(own.values()) - {crit}:
        ks = [k for k, ck in own.items() if ck == c]
        per[ks] = _select(events, c)[ks]
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
    return Thresholds(per, source, global_thr, crit.name, crit.target if crit.name == "precision" else None, level,
                      target_recall=crit.target if crit.name == "recall" else None,
                      class_criteria={k: c for k, c in own.items() if c != crit})
