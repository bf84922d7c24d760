"""Agreement between two runs of the same detector: head outputs (max abs / relative difference)
and post-processed detections (same labels, boxes within a pixel tolerance)."""
from __future__ import annotations

from typing import Any

import torch

__all__ = ["tensor_diff", "match_detections"]


def tensor_diff(ref: torch.Tensor, other: torch.Tensor) -> dict[str, float]:
    """``max_abs = max|ref - other|`` and ``max_rel = max_abs / max|ref|`` (relative to the largest
    reference magnitude, so values near zero do not blow it up), in float64."""
    if ref.shape != other.shape:
        raise ValueError(f"cannot compare outputs of shapes {tuple(ref.shape)} and {tuple(other.shape)}")
    a, b = ref.detach().double().cpu(), other.detach().double().cpu()
    max_abs = float((a - b).abs().max()) if a.numel() else 0.0
    scale = float(a.abs().max()) if a.numel() else 0.0
    return {"max_abs": max_abs, "max_rel": max_abs / scale if scale > 0 else max_abs}


def _at_cutoff(score: float, dets: dict[str, torch.Tensor], score_thresh: float, cap: int, tol: float) -> bool:
    """Whether a detection sits where a rounding difference may drop it: at the score threshold,
    or at the lowest kept score of an image that hit the per-image cap."""
    if score - score_thresh <= tol:
        return True
    return len(dets["scores"]) >= cap and score - float(dets["scores"].min()) <= tol


def _match_image(ref: dict[str, torch.Tensor], other: dict[str, torch.Tensor], box_tol: float) -> tuple[list, set]:
    """Greedy, best score first: each reference detection takes the unused detection of the same
    label whose box is closest (max coordinate difference) if that is within ``box_tol``."""
    pairs, used = [], set()
    rb, ob = ref["boxes"].double().cpu(), other["boxes"].double().cpu()
    for i in torch.argsort(ref["scores"].cpu(), descending=True).tolist():
        same = (other["labels"].cpu() == ref["labels"][i].cpu()).nonzero().flatten().tolist()
        cands = [(float((ob[j] - rb[i]).abs().max()), j) for j in same if j not in used]
        cands = [c for c in cands if c[0] <= box_tol]
        if cands:
            diff, j = min(cands)
            used.add(j)
            pairs.append((i, j, diff))
    return pairs, used


def match_detections(
    ref: list[dict[str, torch.Tensor]],
    other: list[dict[str, torch.Tensor]],
    *,
    score_thresh: float,
    detections_per_image: int,
    box_tol: float = 1.0,
    score_tol: float = 1e-4,
) -> dict[str, Any]:
    """Per-image matching of two detection lists (``{"boxes", "scores", "labels"}`` each).
    ``same`` is true when every detection of either side has a partner with the same label and a
    box within ``box_tol`` pixels, apart from detections within ``score_tol`` of a cut-off (the
    score threshold, or the per-image cap), which a 1e-6 difference may legitimately move across."""
    matched = unmatched = at_cutoff = 0
    max_box = max_score = 0.0
    for r, o in zip(ref, other, strict=True):
        pairs, used = _match_image(r, o, box_tol)
        hit = {i for i, _, _ in pairs}
        for i, j, diff in pairs:
            max_box = max(max_box, diff)
            max_score = max(max_score, abs(float(r["scores"][i]) - float(o["scores"][j])))
        lonely = [(float(r["scores"][i]), r) for i in range(len(r["scores"])) if i not in hit]
        lonely += [(float(o["scores"][j]), o) for j in range(len(o["scores"])) if j not in used]
        excused = sum(_at_cutoff(s, d, score_thresh, detections_per_image, score_tol) for s, d in lonely)
        matched, at_cutoff, unmatched = matched + len(pairs), at_cutoff + excused, unmatched + len(lonely) - excused
    return {"images": len(ref), "reference_detections": sum(len(r["scores"]) for r in ref),
            "other_detections": sum(len(o["scores"]) for o in other), "matched": matched,
            "unmatched": unmatched, "unmatched_at_cutoff": at_cutoff, "max_box_diff_px": max_box,
            "max_score_diff": max_score, "box_tolerance_px": box_tol, "same": unmatched == 0}
