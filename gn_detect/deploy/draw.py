"""Drawing predictions on an image: one box per detection in its class's colour, with the class
name and score on a filled label (black or white text, whichever reads better on the colour);
labels never overlap (examples.png's placement rule, gn_detect/evaluation/label_places.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from gn_detect.evaluation.label_places import Box, free_spot
from gn_detect.io import atomic_open

__all__ = ["PALETTE", "class_color", "drawn_name", "draw_detections", "place_labels"]

# matplotlib's tab10 then the light half of tab20: distinct, readable on photos
PALETTE: tuple[tuple[int, int, int], ...] = (
    (31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
    (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207),
    (174, 199, 232), (255, 187, 120), (152, 223, 138), (255, 152, 150), (197, 176, 213),
    (196, 156, 148), (247, 182, 210), (199, 199, 199), (219, 219, 141), (158, 218, 229),
)


def class_color(label: int) -> tuple[int, int, int]:
    return PALETTE[label % len(PALETTE)]


def drawn_name(file_name: str) -> str:
    """The drawn image's file name: the input's for JPEG and PNG, else the input's plus ``.png``."""
    return file_name if Path(file_name).suffix.lower() in (".jpg", ".jpeg", ".png") else f"{file_name}.png"


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    luminance = 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2]
    return (0, 0, 0) if luminance > 140 else (255, 255, 255)


def _font(size: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1: a scalable font
    except TypeError:
        return ImageFont.load_default()


LABEL_PAD = 1  # pixels of label background around the text


def place_labels(draw: ImageDraw.ImageDraw, detections: list[dict[str, Any]], texts: list[str], font: Any,
                 size: tuple[int, int]) -> list[Box | None]:
    """Each detection's label box (text plus padding) in image pixels, highest score placed first,
    none overlapping another (gn_detect/evaluation/label_places.py: free_spot); None where no
    place inside the image is free."""
    order = sorted(range(len(detections)), key=lambda i: -detections[i].get("score", 0.0))
    taken: list[Box] = []
    spots: list[Box | None] = [None] * len(detections)
    for i in order:
        x, y, _, _ = detections[i]["bbox"]
        x0, y0, x1, y1 = draw.textbbox((0, 0), texts[i], font=font)
        w, h = x1 - x0 + 2 * LABEL_PAD, y1 - y0 + 2 * LABEL_PAD
        spot = free_spot(w, h, x, y, True, (0, 0, size[0], size[1]), taken)
        if spot is not None:
            taken.append(spot)
        spots[i] = spot
    return spots


def draw_detections(image: Image.Image, detections: list[dict[str, Any]], names: dict[int, str],
                    label_to_cat_id: list[int], path: Path) -> Path:
    """Write ``image`` (RGB) with ``detections`` (COCO results of this image: bbox xywh in its
    pixels) drawn, highest score on top, labels where :func:`place_labels` puts them (one with no
    free place is left out, its box drawn), to ``path`` (format from the suffix)."""
    out = image.convert("RGB")
    draw = ImageDraw.Draw(out)
    side = min(out.size)
    width, font = max(1, round(side / 250)), _font(max(10, round(side / 40)))
    label_of = {cid: k for k, cid in enumerate(label_to_cat_id)}
    dets = sorted(detections, key=lambda d: d.get("score", 0.0))  # ground truth: no score
    colors = [class_color(label_of.get(d["category_id"], 0)) for d in dets]
    texts = [f"{names.get(d['category_id'], d['category_id'])}" + (f" {d['score']:.2f}" if "score" in d else "")
             for d in dets]
    for det, color in zip(dets, colors):
        x, y, w, h = det["bbox"]
        draw.rectangle([x, y, x + w, y + h], outline=color, width=width)
    for spot, text, color in zip(place_labels(draw, dets, texts, font, out.size), texts, colors):
        if spot is None:  # labels on top of every box, as examples.png
            continue
        draw.rectangle(list(spot), fill=color)
        x0, y0, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((spot[0] + LABEL_PAD - x0, spot[1] + LABEL_PAD - y0), text, fill=_text_color(color), font=font)
    fmt = Image.registered_extensions().get(path.suffix.lower(), "PNG")
    with atomic_open(path, binary=True) as f:  # a stopped predict leaves no half-drawn image
        out.save(f, format=fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    return path
