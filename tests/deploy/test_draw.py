"""predict's drawn images: labels never overlap (the placement rule examples.png uses,
gn_detect/evaluation/label_places.py), stay inside the image, the highest score keeps the place
just above its box; checked on the boxes placed and on the pixels written."""
from __future__ import annotations

import itertools

import numpy as np
from PIL import Image, ImageDraw

from gn_detect.deploy.draw import LABEL_PAD, _font, class_color, draw_detections, place_labels

NAMES = {1: "circle", 2: "square", 3: "triangle"}


def _dets() -> list[dict]:
    """Nine detections whose boxes share (nearly) one top-left corner: their labels all want one place."""
    return [{"image_id": 1, "category_id": 1 + k % 3, "bbox": [40 + k, 60 + k, 80, 70], "score": 0.9 - 0.05 * k}
            for k in range(9)]


def _disjoint(a, b) -> bool:
    return a[2] <= b[0] or b[2] <= a[0] or a[3] <= b[1] or b[3] <= a[1]


def test_labels_of_stacked_boxes_do_not_overlap_and_stay_inside(tmp_path):
    image = Image.fromarray(np.full((240, 320, 3), 255, np.uint8))
    dets = _dets()
    draw = ImageDraw.Draw(image.copy())
    font = _font(10)
    texts = [f"{NAMES[d['category_id']]} {d['score']:.2f}" for d in dets]
    spots = place_labels(draw, dets, texts, font, image.size)
    assert all(s is not None for s in spots)
    for a, b in itertools.combinations(spots, 2):
        assert _disjoint(a, b), (a, b)
    assert all(0 <= s[0] and 0 <= s[1] and s[2] <= 320 and s[3] <= 240 for s in spots)
    best = spots[0]  # the highest score: right above its box's top edge
    assert best[3] == dets[0]["bbox"][1] and best[0] == dets[0]["bbox"][0]

    path = draw_detections(image, dets, NAMES, [1, 2, 3], tmp_path / "drawn.png")
    px = np.asarray(Image.open(path).convert("RGB"))
    by_score = sorted(dets, key=lambda d: d["score"])
    spots = place_labels(draw, by_score, [f"{NAMES[d['category_id']]} {d['score']:.2f}" for d in by_score], font,
                         image.size)
    for d, s in zip(by_score, spots):  # each label's background corner has its class's colour
        x, y = int(np.ceil(s[0])), int(np.ceil(s[1]))
        assert tuple(px[y, x]) == class_color(d["category_id"] - 1), (d, s)
        row = px[y, x:int(s[2])]  # the padding row above the text: background only, no text pixel
        assert (row == class_color(d["category_id"] - 1)).all() and LABEL_PAD >= 1, (d, s)


def test_a_label_without_room_is_left_out():
    small = Image.new("RGB", (120, 30), "white")
    dets = [{"category_id": 1, "bbox": [10 + k, 14, 50, 10], "score": 0.9 - 0.1 * k} for k in range(5)]
    spots = place_labels(ImageDraw.Draw(small), dets, [f"label {k}" for k in range(5)], _font(10), small.size)
    placed = [s for s in spots if s is not None]
    # labels 10 px tall kept 1 px apart: a row below the first touches it, one more leaves the 30 px image
    assert placed == [spots[0]] and (spots[0][0], spots[0][3]) == (10, 14)  # the first: right above its box
    for a, b in itertools.combinations(placed, 2):
        assert _disjoint(a, b)
