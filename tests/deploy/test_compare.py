"""The detection matcher the export check and the fold tests rely on: order-free, label- and
box-tolerance-aware, excusing only detections at a score cut-off."""
import torch

from gn_detect.deploy.export_check import match_detections, tensor_diff


def _dets(boxes, scores, labels):
    return {"boxes": torch.tensor(boxes, dtype=torch.float32), "scores": torch.tensor(scores),
            "labels": torch.tensor(labels)}


REF = _dets([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], [0.9, 0.9, 0.3], [1, 2, 1])


def _match(other, **kw):
    return match_detections([REF], [other], score_thresh=0.05, detections_per_image=100, **kw)


def test_swapped_order_and_subpixel_shifts_match():
    other = _dets([[5.4, 5, 20, 20], [0, 0.3, 10, 10], [30, 30, 40, 50]], [0.9, 0.9, 0.3], [2, 1, 1])
    out = _match(other)
    assert out["same"] and out["matched"] == 3 and abs(out["max_box_diff_px"] - 0.4) < 1e-5


def test_a_moved_box_a_changed_label_or_a_missing_detection_do_not_match():
    moved = _dets([[0, 0, 10, 10], [5, 5, 22, 20], [30, 30, 40, 50]], [0.9, 0.9, 0.3], [1, 2, 1])
    relabeled = _dets([[0, 0, 10, 10], [5, 5, 20, 20], [30, 30, 40, 50]], [0.9, 0.9, 0.3], [1, 2, 0])
    missing = _dets([[0, 0, 10, 10], [5, 5, 20, 20]], [0.9, 0.9], [1, 2])
    for other in (moved, relabeled, missing):
        out = _match(other)
        assert not out["same"] and out["unmatched"] >= 1


def test_a_detection_at_the_score_threshold_is_excused():
    ref = _dets([[0, 0, 10, 10], [30, 30, 40, 50]], [0.9, 0.05003], [1, 1])
    other = _dets([[0, 0, 10, 10]], [0.9], [1])
    out = match_detections([ref], [other], score_thresh=0.05, detections_per_image=100)
    assert out["same"] and out["unmatched_at_cutoff"] == 1


def test_tensor_diff_is_relative_to_the_largest_reference_value():
    d = tensor_diff(torch.tensor([10.0, -0.001]), torch.tensor([10.0, 0.001]))
    assert abs(d["max_abs"] - 0.002) < 1e-7 and abs(d["max_rel"] - 0.0002) < 1e-7
