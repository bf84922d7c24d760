"""Label level: "is class c in image i?" answered over (image, class) pairs.

* GT: the pair is *positive* when image i has at least one non-crowd GT box of class c;
  *ignored* when its only GT of class c are crowd regions (a crowd of people is present, but
  COCO marks it "don't score me": we neither reward nor punish saying so); *negative*
  otherwise. Every image of the GT file and every category take part, so images without
  annotations contribute negatives.
* prediction: class c is predicted in image i at threshold t when its highest detection score
  in i is >= t (after the per-image cap on detections).

Pairs without any detection are never predicted and contribute only false negatives; the
events therefore hold one entry per (non-ignored) pair that has a detection.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gn_detect.evaluation.events import Events
from gn_detect.evaluation.matching import DetArrays, GroundTruth

__all__ = ["LabelPairs", "label_pairs"]


@dataclass(frozen=True)
class LabelPairs:
    """Per-pair view, keys = image_index * K + class_index."""

    pos_keys: np.ndarray  # positive pairs (sorted unique)
    ignored_keys: np.ndarray  # crowd-only pairs (sorted unique)
    det_keys: np.ndarray  # pairs with >= 1 detection (sorted unique)
    det_max_score: np.ndarray  # their highest score
    num_classes: int

    def events(self) -> Events:
        K = self.num_classes
        keep = ~np.isin(self.det_keys, self.ignored_keys, assume_unique=True)
        keys = self.det_keys[keep]
        is_tp = np.isin(keys, self.pos_keys, assume_unique=True)
        num_pos = np.bincount(self.pos_keys % K, minlength=K).astype(np.int64) if K else np.zeros(0, np.int64)
        return Events(cls=keys % K if K else keys, score=self.det_max_score[keep], is_tp=is_tp, num_pos=num_pos)


def label_pairs(gt: GroundTruth, dets: DetArrays) -> LabelPairs:
    K = gt.num_classes
    gkey = gt.img * K + gt.cls
    pos = np.unique(gkey[~gt.crowd])
    ign = np.setdiff1d(np.unique(gkey[gt.crowd]), pos, assume_unique=True)
    if len(dets):
        dkey = dets.img * K + dets.cls
        order = np.argsort(dkey, kind="stable")
        dk = dkey[order]
        start = np.r_[0, np.flatnonzero(dk[1:] != dk[:-1]) + 1]
        keys = dk[start]
        mx = np.maximum.reduceat(dets.scores[order], start)
    else:
        keys = np.zeros(0, np.int64)
        mx = np.zeros(0)
    return LabelPairs(pos, ign, keys, mx, K)
