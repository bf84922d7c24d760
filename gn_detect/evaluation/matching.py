"""Box-level matching of detections to ground truth, COCO-compatible at a single IoU.

Rules (the same as pycocotools' ``COCOeval.evaluateImg`` for area range "all"):

* matching is per (image, class); detections are visited by decreasing score, ties in input
  order (pycocotools uses a stable sort on the result list, so do we);
* a detection takes the *unmatched non-crowd* GT with the highest IoU >= ``iou_threshold``
  (ties: the later GT in annotation order, as pycocotools' ``<`` comparison does);
* when no non-crowd GT is available it may fall on a crowd region (IoU with a crowd region is
  intersection / detection area); it is then *ignored*, neither TP nor FP. Crowd regions can
  absorb any number of detections;
* everything else is a false positive.

Because the visit order is by score, the decisions for detections scoring >= t never depend
on detections below t: thresholding the matches computed once at t=0 is exactly the same as
re-matching only the detections >= t. That is what makes threshold tuning a sort + cumsum.

``max_dets`` keeps the top detections *per image* (the COCO challenge rule; the engine already
emits at most 100 per image). pycocotools caps per (image, class) instead; the two agree
whenever an image has at most ``max_dets`` detections, which ``cap_per_image`` guarantees for
everything downstream because the report feeds the capped list to COCOeval too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from pycocotools.coco import COCO

from gn_detect.evaluation.coco_eval import result_arrays
from gn_detect.evaluation.events import Events

__all__ = [
    "GroundTruth",
    "DetArrays",
    "BoxMatches",
    "TP",
    "FP",
    "IGNORED",
    "cap_per_image",
    "iou_xywh",
    "match_boxes",
]

TP, FP, IGNORED = 1, 0, -1

# pairs (detection x GT of the same image and class) handled per chunk: bounds memory when
# an image has many detections and many GT of one class (crowded "person" images).
_PAIR_CHUNK = 2_000_000


@dataclass(frozen=True)
class GroundTruth:
    """The GT of a COCO object as flat arrays; classes are indexed 0..K-1 in cat-id order."""

    image_ids: np.ndarray  # (I,) sorted image ids
    cat_ids: np.ndarray  # (K,) sorted category ids
    names: list[str]
    img: np.ndarray  # (N,) image index of each annotation
    cls: np.ndarray  # (N,) class index
    boxes: np.ndarray  # (N, 4) xywh float64
    crowd: np.ndarray  # (N,) bool
    ann_ids: np.ndarray  # (N,) annotation ids, in dataset order

    @classmethod
    def from_coco(cls, coco: COCO) -> "GroundTruth":
        image_ids = np.array(sorted(coco.getImgIds()), dtype=np.int64)
        cat_ids = np.array(sorted(coco.getCatIds()), dtype=np.int64)
        names = [str(coco.cats[int(c)].get("name", c)) for c in cat_ids]
        anns = [a for a in coco.dataset.get("annotations", []) if a["category_id"] in coco.cats]
        n = len(anns)
        img_id = np.fromiter((a["image_id"] for a in anns), np.int64, n)
        cat_id = np.fromiter((a["category_id"] for a in anns), np.int64, n)
        boxes = np.array([a["bbox"] for a in anns], dtype=np.float64).reshape(n, 4)
        crowd = np.fromiter((bool(a.get("iscrowd", 0)) for a in anns), bool, n)
        ann_ids = np.fromiter((a.get("id", i) for i, a in enumerate(anns)), np.int64, n)
        return cls(
            image_ids=image_ids,
            cat_ids=cat_ids,
            names=names,
            img=_index_of(image_ids, img_id, "annotation image_id"),
            cls=_index_of(cat_ids, cat_id, "annotation category_id"),
            boxes=boxes,
            crowd=crowd,
            ann_ids=ann_ids,
        )

    @property
    def num_classes(self) -> int:
        return len(self.cat_ids)

    @property
    def num_images(self) -> int:
        return len(self.image_ids)

    def num_pos_boxes(self) -> np.ndarray:
        """Non-crowd GT boxes per class."""
        return np.bincount(self.cls[~self.crowd], minlength=self.num_classes).astype(np.int64)


@dataclass(frozen=True)
class DetArrays:
    """Detections as flat arrays, in input order."""

    img: np.ndarray  # image index into GroundTruth.image_ids
    cls: np.ndarray  # class index into GroundTruth.cat_ids
    boxes: np.ndarray  # (M, 4) xywh float64
    scores: np.ndarray  # (M,) float64

    @classmethod
    def from_results(cls, detections: Sequence[dict[str, Any]], gt: GroundTruth) -> "DetArrays":
        img_id, cat_id, boxes, scores = result_arrays(detections)
        return cls(
            img=_index_of(gt.image_ids, img_id, "detection image_id"),
            cls=_index_of(gt.cat_ids, cat_id, "detection category_id"),
            boxes=boxes,
            scores=scores,
        )

    def __len__(self) -> int:
        return len(self.scores)

    def take(self, idx: np.ndarray) -> "DetArrays":
        return DetArrays(self.img[idx], self.cls[idx], self.boxes[idx], self.scores[idx])


def _index_of(sorted_ids: np.ndarray, ids: np.ndarray, what: str) -> np.ndarray:
    # unknown ids are an upstream bug (wrong label->cat_id map, wrong split): fail loudly
    # rather than silently dropping detections, as pycocotools' loadRes also does.
    idx = np.searchsorted(sorted_ids, ids)
    bad = (idx >= len(sorted_ids)) | (sorted_ids[np.minimum(idx, len(sorted_ids) - 1)] != ids)
    if len(sorted_ids) == 0:
        bad = np.ones(len(ids), bool)
    if bad.any():
        raise ValueError(
            f"{int(bad.sum())} {what}(s) not in the ground truth, e.g. {ids[bad][:5].tolist()}"
        )
    return idx.astype(np.int64)


def cap_per_image(img: np.ndarray, scores: np.ndarray, max_dets: int | None) -> np.ndarray:
    """Indices (ascending, i.e. input order) of the top ``max_dets`` detections of each image
    by score; ties keep the earlier detection."""
    n = len(scores)
    if max_dets is None or n == 0:
        return np.arange(n)
    order = np.lexsort((np.arange(n), -scores, img))
    img_s = img[order]
    start = np.r_[0, np.flatnonzero(img_s[1:] != img_s[:-1]) + 1]
    rank = np.arange(n) - np.repeat(start, np.diff(np.r_[start, n]))
    return np.sort(order[rank < max_dets])


def iou_xywh(d: np.ndarray, g: np.ndarray, g_crowd: np.ndarray) -> np.ndarray:
    """Element-wise IoU of paired xywh boxes, the exact float64 arithmetic of pycocotools'
    ``bbIou`` (so threshold decisions agree bit for bit); for crowd GT the union is the
    detection area."""
    dx, dy, dw, dh = d.T
    gx, gy, gw, gh = g.T
    w = np.minimum(dw + dx, gw + gx) - np.maximum(dx, gx)
    h = np.minimum(dh + dy, gh + gy) - np.maximum(dy, gy)
    inter = w * h
    da = dw * dh
    union = np.where(g_crowd, da, da + gw * gh - inter)
    ok = (w > 0) & (h > 0)
    out = np.zeros(len(d))
    np.divide(inter, union, out=out, where=ok)
    return out


@dataclass(frozen=True)
class BoxMatches:
    """Per-detection outcome (input order of the capped detections)."""

    dets: DetArrays
    status: np.ndarray  # TP / FP / IGNORED
    gt_index: np.ndarray  # matched GT row (TP or crowd), -1 otherwise
    iou: np.ndarray  # IoU with the matched GT, 0 otherwise
    num_pos: np.ndarray  # non-crowd GT per class

    def events(self) -> Events:
        keep = self.status != IGNORED
        return Events(
            cls=self.dets.cls[keep],
            score=self.dets.scores[keep],
            is_tp=self.status[keep] == TP,
            num_pos=self.num_pos,
        )


def match_boxes(gt: GroundTruth, dets: DetArrays, iou_threshold: float = 0.5) -> BoxMatches:
    """Greedy COCO matching at one IoU threshold (see the module doc)."""
    K = gt.num_classes
    m = len(dets)
    status = np.full(m, FP, np.int8)
    gt_index = np.full(m, -1, np.int64)
    best_iou = np.zeros(m)
    num_pos = gt.num_pos_boxes()
    if m == 0 or len(gt.img) == 0:
        return BoxMatches(dets, status, gt_index, best_iou, num_pos)

    # pycocotools: `if iou < min(t, 1 - 1e-10): continue`, i.e. IoU >= thr matches
    thr = min(float(iou_threshold), 1 - 1e-10)

    dkey = dets.img * K + dets.cls
    d_order = np.lexsort((np.arange(m), -dets.scores, dkey))  # visit order
    dkey_s = dkey[d_order]
    gkey = gt.img * K + gt.cls
    # non-crowd first, then annotation order: the GT order pycocotools iterates
    g_order = np.lexsort((np.arange(len(gkey)), gt.crowd, gkey))
    gkey_s = gkey[g_order]
    lo = np.searchsorted(gkey_s, dkey_s, "left")
    cnt = np.searchsorted(gkey_s, dkey_s, "right") - lo

    # candidate pairs (detection rank in visit order, GT rank in GT order, iou)
    cand_d, cand_g, cand_iou = [], [], []
    cum = np.r_[0, np.cumsum(cnt)]
    start = 0
    while start < m:
        # as many detections as fit in one chunk of pairs (at least one)
        stop = max(int(np.searchsorted(cum, cum[start] + _PAIR_CHUNK, "right")) - 1, start + 1)
        stop = min(stop, m)
        c = cnt[start:stop]
        total = int(c.sum())
        if total:
            di = np.repeat(np.arange(start, stop), c)
            off = np.arange(total) - np.repeat(np.cumsum(c) - c, c)
            gi = np.repeat(lo[start:stop], c) + off
            gorig = g_order[gi]
            iou = iou_xywh(dets.boxes[d_order[di]], gt.boxes[gorig], gt.crowd[gorig])
            ok = iou >= thr
            cand_d.append(di[ok])
            cand_g.append(gi[ok])
            cand_iou.append(iou[ok])
        start = stop

    if cand_d:
        cd, cg, ci = np.concatenate(cand_d), np.concatenate(cand_g), np.concatenate(cand_iou)
    else:
        cd = cg = np.zeros(0, np.int64)
        ci = np.zeros(0)
    if len(cd):
        crowd_s = gt.crowd[g_order][cg]
        # preference of each detection: non-crowd before crowd, higher IoU, later GT
        pref = np.lexsort((-cg, -ci, crowd_s, cd))
        cd, cg, ci, crowd_s = cd[pref], cg[pref], ci[pref], crowd_s[pref]
        st_s, gi_s, iou_s = _greedy(cd, cg, ci, crowd_s, len(gkey_s), m)
        status[d_order] = st_s
        gi_orig = np.where(gi_s >= 0, g_order[np.maximum(gi_s, 0)], -1)
        gt_index[d_order] = gi_orig
        best_iou[d_order] = iou_s
    return BoxMatches(dets, status, gt_index, best_iou, num_pos)


def _greedy(
    cd: np.ndarray, cg: np.ndarray, ci: np.ndarray, crowd: np.ndarray, num_gt: int, n_det: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Sequential resolution over candidate pairs only (detections without any candidate are
    FPs and never visited). Pairs come grouped by detection in visit order and sorted by
    preference within a detection, so each detection takes its first free non-crowd GT, or is
    ignored if it reaches a crowd candidate first.

    A detection whose first choice is wanted by no other detection takes it without contest;
    only contested detections go through the Python loop.
    """
    status = np.full(n_det, FP, np.int8)
    gidx = np.full(n_det, -1, np.int64)
    giou = np.zeros(n_det)

    first = np.r_[True, cd[1:] != cd[:-1]]
    fpos = np.flatnonzero(first)
    pairs_per_gt = np.bincount(cg, minlength=num_gt)
    f_g, f_crowd = cg[fpos], crowd[fpos]
    # uncontested: first choice is a non-crowd GT that only this detection wants; it can
    # never be taken by anyone else, and this detection never takes anything else.
    easy = ~f_crowd & (pairs_per_gt[f_g] == 1)
    ed = cd[fpos[easy]]
    status[ed] = TP
    gidx[ed] = f_g[easy]
    giou[ed] = ci[fpos[easy]]
    # first choice crowd => no free non-crowd candidate at all => ignored, also uncontested
    cr = f_crowd
    status[cd[fpos[cr]]] = IGNORED
    gidx[cd[fpos[cr]]] = f_g[cr]
    giou[cd[fpos[cr]]] = ci[fpos[cr]]

    hard = np.flatnonzero(~easy & ~cr)
    if len(hard):
        ends = np.r_[fpos[1:], len(cd)]
        # easy detections took GT nobody else wants, so only contested takes are tracked
        cg_l, cc_l, ci_l = cg.tolist(), crowd.tolist(), ci.tolist()
        fpos_l, ends_l, cd_f = fpos.tolist(), ends.tolist(), cd[fpos].tolist()
        taken_l = [False] * num_gt
        st_l = {}
        for h in hard.tolist():
            for p in range(fpos_l[h], ends_l[h]):
                g = cg_l[p]
                if cc_l[p]:
                    st_l[cd_f[h]] = (IGNORED, g, ci_l[p])
                    break
                if not taken_l[g]:
                    taken_l[g] = True
                    st_l[cd_f[h]] = (TP, g, ci_l[p])
                    break
        if st_l:
            d = np.fromiter(st_l.keys(), np.int64, len(st_l))
            vals = list(st_l.values())
            status[d] = [v[0] for v in vals]
            gidx[d] = [v[1] for v in vals]
            giou[d] = [v[2] for v in vals]
    return status, gidx, giou
