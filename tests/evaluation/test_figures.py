"""examples.png read through its matplotlib artists: every label present, top-k predictions only,
one colour per class, and no two labels overlapping (the renderer's window extents)."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from matplotlib.colors import to_rgba
from matplotlib.patches import Rectangle
from PIL import Image

from gn_detect.evaluation.figures import class_colors, draw_examples, label_extent, plot_examples, pr_curves_figure
from gn_detect.evaluation.report import prepare

from .conftest import det, make_gt

CATS = ("circle", "square", "triangle")


@pytest.fixture
def crowded(tmp_path: Path):
    """Two 100x100 images; image 1 has four GT boxes sharing one top-left corner (so every label
    wants the same spot) and nine detections, image 2 one GT and one detection."""
    for i in (1, 2):
        Image.fromarray(np.full((100, 100, 3), 60 * i, np.uint8)).save(tmp_path / f"{i}.png")
    anns = [(1, 1, [10, 10, 40, 40]), (1, 2, [10, 10, 30, 30]), (1, 3, [10, 10, 50, 20]), (1, 1, [12, 12, 20, 20]),
            (2, 3, [50, 50, 30, 30])]
    gt = make_gt(anns, num_images=2, cats=CATS)
    scores = [0.95, 0.9, 0.85, 0.8, 0.75, 0.7, 0.65, 0.6, 0.3]
    dets = [det(1, 1 + k % 3, [10 + k, 10 + k, 30, 30], s) for k, s in enumerate(scores)]
    dets.append(det(2, 3, [50, 50, 30, 30], 0.99))
    prep = prepare(gt, dets)
    return tmp_path, prep, {1: "1.png", 2: "2.png"}


def _labels(fig) -> list:
    return [t for ax in fig.axes for t in ax.texts]


def test_labels_present_top_k_and_never_overlapping(crowded) -> None:
    root, prep, names = crowded
    thresholds = np.array([0.0, 0.0, 0.5])  # triangle: the 0.3 detection is below its threshold
    fig, ids = draw_examples(root, names, prep.gt, prep.matches, thresholds, num_images=2, max_preds=5)
    assert ids == [1, 2]
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    ax1, ax2 = fig.axes[:2]
    texts1 = sorted(t.get_text() for t in ax1.texts)
    # the 4 GT names, and the 5 best of the 8 predictions >= threshold, with their scores
    assert sorted(s for s in texts1 if " " not in s) == ["circle", "circle", "square", "triangle"]
    preds = [s for s in texts1 if " " in s]
    assert len(preds) == 5
    assert sorted(float(s.split()[1]) for s in preds) == [0.75, 0.8, 0.85, 0.9, 0.95]
    assert "circle 0.95" in texts1 and any(s.startswith("square 0.90") for s in texts1)
    assert sorted(t.get_text() for t in ax2.texts) == ["triangle", "triangle 0.99"]
    assert "top 5 of 8" in ax1.get_title() and "labels left out" not in ax1.get_title()

    boxes = [(t.get_text(), label_extent(t, renderer)) for t in _labels(fig)]
    for (a, ba), (b, bb) in itertools.combinations(boxes, 2):
        assert not ba.overlaps(bb), f"labels {a!r} and {b!r} overlap: {ba} {bb}"
    for ax in (ax1, ax2):  # and every label stays on its image
        area = ax.get_window_extent(renderer)
        for t in ax.texts:
            e = label_extent(t, renderer)
            assert area.x0 - 0.5 <= e.x0 and e.x1 <= area.x1 + 0.5 and area.y0 - 0.5 <= e.y0 and e.y1 <= area.y1 + 0.5


def test_one_colour_per_class_and_file_written(crowded) -> None:
    root, prep, names = crowded
    colors = [to_rgba(c) for c in class_colors(3)]
    assert len(set(colors)) == 3
    fig, _ = draw_examples(root, names, prep.gt, prep.matches, np.zeros(3), num_images=1, max_preds=8)
    ax = fig.axes[0]
    rects = [p for p in ax.patches if isinstance(p, Rectangle)]
    gt_rects = [r for r in rects if r.get_linestyle() == "-"]
    assert len(gt_rects) == 4 and len(rects) == 4 + 8
    gt = prep.gt
    expected = sorted(colors[k] for k in gt.cls[gt.img == 0])
    assert sorted(tuple(r.get_edgecolor()) for r in gt_rects) == expected
    for t in ax.texts:  # each label's frame has its class's colour
        name = t.get_text().split()[0]
        assert tuple(t.get_bbox_patch().get_edgecolor())[:3] == pytest.approx(colors[CATS.index(name)][:3])
    out = root / "examples.png"
    assert plot_examples(out, root, names, prep.gt, prep.matches, np.zeros(3), num_images=2) == [1, 2]
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_many_labels_in_a_small_image_are_left_out_not_overlapped(tmp_path: Path) -> None:
    Image.fromarray(np.zeros((100, 100, 3), np.uint8)).save(tmp_path / "1.png")
    # 100 GT boxes in one narrow column: more labels than the column has room for
    anns = [(1, 1 + k % 3, [5 + k % 3, k % 90, 10, 10]) for k in range(100)]
    gt = make_gt(anns, num_images=1, cats=CATS)
    dets = [det(1, 1 + k % 3, [5 + k % 3, k % 90, 10, 10], 0.9 - k / 1000) for k in range(100)]
    prep = prepare(gt, dets)
    fig, _ = draw_examples(tmp_path, {1: "1.png"}, prep.gt, prep.matches, np.zeros(3), num_images=1, max_preds=8)
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    boxes = [label_extent(t, renderer) for t in fig.axes[0].texts]
    assert not any(a.overlaps(b) for a, b in itertools.combinations(boxes, 2))
    shown = len(boxes)
    assert 20 < shown < 108 and f"({108 - shown} labels left out: no room)" in fig.axes[0].get_title()


def _legend_texts(fig) -> list[str]:
    return [t.get_text() for leg in fig.legends for t in leg.get_texts()]


def test_pr_curves_have_a_legend_also_without_box_curves(crowded) -> None:
    """pr_curves.png's legend is the figure's, whatever the panels hold; with no detection at all
    there are no curves and the legend says so (it used to have no legend then)."""
    _, prep, _ = crowded
    thr = np.full(3, 0.5)
    fig, ks = pr_curves_figure(CATS, prep.box, prep.label, thr, [0.1, 0.2, 0.3])
    assert sorted(ks) == [0, 1, 2]
    assert _legend_texts(fig) == ["box level", "label level", "operating point at the class threshold"]
    empty = prepare(make_gt([(1, 1, [10, 10, 40, 40]), (1, 2, [0, 0, 20, 20])], num_images=1, cats=CATS), [])
    fig, _ = pr_curves_figure(CATS, empty.box, empty.label, thr, [0.0, 0.0, None])
    assert not any(line.get_linestyle() in ("-", "--") for ax in fig.axes for line in ax.get_lines())
    texts = _legend_texts(fig)
    assert texts[0].startswith("box level: no box curves") and texts[1].startswith("label level: no label curves")


def test_a_figure_replaces_a_symlink_and_never_writes_through_it(tmp_path) -> None:
    """Hostile input, round four: a figure path in a run folder that is a symlink to a file outside
    is replaced by the figure; the outside file keeps its bytes (every figure goes through save_figure)."""
    from matplotlib.figure import Figure

    from gn_detect.evaluation.figures import save_figure

    outside = tmp_path / "precious.txt"
    outside.write_text("keep me\n")
    link = tmp_path / "run" / "pr_curves.png"
    link.parent.mkdir()
    link.symlink_to(outside)
    fig = Figure(figsize=(2, 2))
    fig.add_subplot().plot([0, 1], [1, 0])
    save_figure(fig, link, dpi=50)
    assert outside.read_text() == "keep me\n"
    assert not link.is_symlink() and link.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
