"""'shapes': a small synthetic COCO-format detection dataset generated on disk.

Coloured shapes (circle, square, triangle, star, cross, hexagon) of sizes from small to
large, rotated, partly overlapping, on cluttered backgrounds (colour gradients, distractor
lines and dots, pixel noise). Boxes are the exact pixel extents of each shape's visible
mask, so they are tight by construction. Everything is a function of the seed: image i of a
split only depends on (seed, split, i), never on how many images are generated.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import shutil
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

from gn_detect.io import write_json_atomic

try:
    import fcntl
except ImportError:  # non-POSIX: ensure_shapes_dataset relies on the atomic rename alone
    fcntl = None  # type: ignore[assignment]

logger = logging.getLogger(__name__)

SHAPE_CLASSES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross", "hexagon")
GENERATOR_VERSION = 1  # bump when the drawing changes, so cached datasets get regenerated
META_FILE = "shapes_meta.json"
# where build_dataset finds each split under the dataset root
SHAPES_LAYOUT: dict[str, dict[str, str]] = {
    "train": {"images": "train", "ann": "annotations/instances_train.json"},
    "val": {"images": "val", "ann": "annotations/instances_val.json"},
}
_SPLIT_CODE = {"train": 1, "val": 2}

# an earlier shape must keep this fraction of its area visible when later ones overlap it
_MIN_VISIBLE = 0.6
_PLACEMENT_TRIES = 25


@dataclass
class DrawnShape:
    label: int  # 0-based index into the class list
    mask: np.ndarray  # bool HxW, visible pixels (after occlusion by later shapes)
    full_area: int


def _polygon(kind: str, cx: float, cy: float, r: float, angle: float) -> list[tuple[float, float]]:
    """Vertices of a shape of 'radius' r centred at (cx, cy), rotated by angle (radians)."""
    if kind == "square":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.arange(4) * math.pi / 2 + math.pi / 4]
    elif kind == "triangle":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.arange(3) * 2 * math.pi / 3 - math.pi / 2]
    elif kind == "hexagon":
        pts = [(r * math.cos(a), r * math.sin(a)) for a in np.arange(6) * math.pi / 3]
    elif kind == "star":
        pts = [((r if k % 2 == 0 else 0.45 * r) * math.cos(a), (r if k % 2 == 0 else 0.45 * r) * math.sin(a))
               for k, a in enumerate(np.arange(10) * math.pi / 5 - math.pi / 2)]
    elif kind == "cross":
        t = 0.33 * r  # half the arm thickness
        pts = [(t, r), (t, t), (r, t), (r, -t), (t, -t), (t, -r),
               (-t, -r), (-t, -t), (-r, -t), (-r, t), (-t, t), (-t, r)]
    else:
        raise ValueError(kind)
    c, s = math.cos(angle), math.sin(angle)
    return [(cx + x * c - y * s, cy + x * s + y * c) for x, y in pts]


def _shape_mask(kind: str, h: int, w: int, cx: float, cy: float, r: float, angle: float,
                aspect: float) -> np.ndarray:
    m = Image.new("L", (w, h), 0)
    d = ImageDraw.Draw(m)
    if kind == "circle":  # an ellipse for aspect != 1
        rx, ry = r * math.sqrt(aspect), r / math.sqrt(aspect)
        d.ellipse([cx - rx, cy - ry, cx + rx, cy + ry], fill=255)
    else:
        d.polygon(_polygon(kind, cx, cy, r, angle), fill=255)
    return np.asarray(m) > 0


def _background(rng: np.random.Generator, h: int, w: int, clutter: float = 1.0) -> np.ndarray:
    """Linear colour gradient in a random direction, plus distractor lines and dots (up to
    ``5 * clutter`` lines and ``11 * clutter`` dots)."""
    c0, c1 = rng.uniform(20, 235, size=(2, 3))
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = (xx * math.cos(theta) + yy * math.sin(theta))
    t = (t - t.min()) / max(float(t.max() - t.min()), 1.0)
    img = (c0[None, None] * (1 - t[..., None]) + c1[None, None] * t[..., None]).astype(np.uint8)
    pil = Image.fromarray(img, "RGB")
    d = ImageDraw.Draw(pil)
    for _ in range(int(rng.integers(0, int(5 * clutter) + 1))):  # distractor lines
        x0, x1 = rng.uniform(0, w, 2)
        y0, y1 = rng.uniform(0, h, 2)
        d.line([(x0, y0), (x1, y1)], fill=tuple(int(v) for v in rng.integers(0, 256, 3)),
               width=int(rng.integers(1, 4)))
    for _ in range(int(rng.integers(0, int(11 * clutter) + 1))):  # small dots, smaller than any shape
        x, y, rad = rng.uniform(0, w), rng.uniform(0, h), rng.uniform(0.5, 2.0)
        d.ellipse([x - rad, y - rad, x + rad, y + rad], fill=tuple(int(v) for v in rng.integers(0, 256, 3)))
    return np.array(pil)


def _shape_colour(rng: np.random.Generator, near: np.ndarray, hue_range: tuple[float, float] = (0.0, 6.0)) -> np.ndarray:
    """A saturated colour that differs clearly from the background colour `near`; the hue
    (0..6, six sectors of the colour wheel) is drawn from ``hue_range``."""
    best, best_d = None, -1.0
    for _ in range(8):
        hue = rng.uniform(*hue_range) % 6
        sat, val = rng.uniform(0.5, 1.0), rng.uniform(0.45, 1.0)
        i, f = int(hue) % 6, hue - int(hue)
        p, q, t = val * (1 - sat), val * (1 - sat * f), val * (1 - sat * (1 - f))
        rgb = [(val, t, p), (q, val, p), (p, val, t), (p, q, val), (t, p, val), (val, p, q)][i]
        col = np.asarray(rgb) * 255.0
        dist = float(np.abs(col - near).mean())
        if dist > best_d:
            best, best_d = col, dist
        if dist > 60:
            break
    return np.asarray(best, dtype=np.float32)


def _hue_range(label: int, num_classes: int, class_colours: bool) -> tuple[float, float]:
    """Any hue, or with ``class_colours`` a band of the colour wheel that belongs to the class
    (1/num_classes of the wheel, its middle 60%), so colour is a cue to the class as well as shape."""
    if not class_colours:
        return 0.0, 6.0
    width = 6.0 / num_classes
    return label * width + 0.2 * width, label * width + 0.8 * width


def render_image(
    rng: np.random.Generator,
    height: int,
    width: int,
    num_classes: int = 5,
    max_objects: int = 6,
    *,
    min_radius: float = 0.035,
    max_radius: float = 0.3,
    clutter: float = 1.0,
    class_colours: bool = False,
) -> tuple[np.ndarray, list[DrawnShape]]:
    """Draw one image; returns (uint8 HxWx3, shapes with their visible masks).

    Shape radii are log-uniform in [min_radius, max_radius] x the short side; ``clutter``
    scales the distractors and the pixel noise (0: a plain gradient); ``class_colours`` gives
    each class its own band of hues."""
    img = _background(rng, height, width, clutter).astype(np.float32)
    shapes: list[DrawnShape] = []
    short = min(height, width)
    n_obj = int(rng.integers(1, max_objects + 1))
    for _ in range(n_obj):
        label = int(rng.integers(0, num_classes))
        kind = SHAPE_CLASSES[label]
        for _try in range(_PLACEMENT_TRIES):
            r = float(math.exp(rng.uniform(math.log(min_radius * short), math.log(max_radius * short))))
            r = max(r, 4.0)
            aspect = float(math.exp(rng.uniform(-0.4, 0.4))) if kind == "circle" else 1.0
            cx, cy = rng.uniform(r * 1.2, width - r * 1.2), rng.uniform(r * 1.2, height - r * 1.2)
            angle = float(rng.uniform(0, 2 * math.pi))
            mask = _shape_mask(kind, height, width, float(cx), float(cy), r, angle, aspect)
            area = int(mask.sum())
            if area < 16:
                continue
            # keep every earlier shape mostly visible, so its (visible) box is meaningful
            if all((s.mask & ~mask).sum() >= _MIN_VISIBLE * s.full_area for s in shapes):
                break
        else:
            continue  # no room: fewer objects in this image
        colour = _shape_colour(rng, img[mask].mean(axis=0), _hue_range(label, num_classes, class_colours))
        # a little shading so shapes are not flat blocks
        shade = rng.uniform(0.85, 1.0, size=(1, 3)).astype(np.float32)
        img[mask] = np.clip(colour * shade, 0, 255)
        for s in shapes:
            s.mask = s.mask & ~mask
        shapes.append(DrawnShape(label, mask, area))
    sigma = float(rng.uniform(0, 8)) * clutter
    img = img + rng.normal(0, sigma, size=img.shape).astype(np.float32)
    return np.clip(img + 0.5, 0, 255).astype(np.uint8), shapes


def mask_to_box(mask: np.ndarray) -> list[int]:
    """Tight COCO [x, y, w, h] (pixel edges) of a boolean mask."""
    ys = np.flatnonzero(mask.any(axis=1))
    xs = np.flatnonzero(mask.any(axis=0))
    return [int(xs[0]), int(ys[0]), int(xs[-1] - xs[0] + 1), int(ys[-1] - ys[0] + 1)]


def image_rng(seed: int, split: str, index: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([int(seed), _SPLIT_CODE.get(split, 99), int(index)]))


def _image_hw(rng: np.random.Generator, image_size: int) -> tuple[int, int]:
    # landscape, square and portrait images, so aspect-ratio grouping has something to group
    short = int(round(image_size * 0.75))
    return [(image_size, image_size), (short, image_size), (image_size, short)][int(rng.integers(0, 3))]


def iter_split(split: str, num_images: int, *, image_size: int, seed: int, num_classes: int,
               max_objects: int = 6, **style: Any) -> Iterator[tuple[int, np.ndarray, list[DrawnShape]]]:
    """(index, image, shapes) of a split; ``style``: render_image's keyword options."""
    for i in range(num_images):
        rng = image_rng(seed, split, i)
        h, w = _image_hw(rng, image_size)
        img, shapes = render_image(rng, h, w, num_classes, max_objects, **style)
        yield i, img, shapes


def generate_split(out_dir: Path, split: str, num_images: int, *, image_size: int, seed: int,
                   num_classes: int, image_format: str = "jpg", max_objects: int = 6,
                   **style: Any) -> dict[str, Any]:
    """Write one split's images under out_dir/<images> and return its COCO dict."""
    layout = SHAPES_LAYOUT[split]
    img_dir = out_dir / layout["images"]
    img_dir.mkdir(parents=True, exist_ok=True)
    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    for i, img, shapes in iter_split(split, num_images, image_size=image_size, seed=seed,
                                     num_classes=num_classes, max_objects=max_objects, **style):
        image_id = i + 1
        file_name = f"{image_id:06d}.{image_format}"
        pil = Image.fromarray(img, "RGB")
        if image_format == "jpg":
            pil.save(img_dir / file_name, format="JPEG", quality=92)
        else:
            pil.save(img_dir / file_name, format="PNG", compress_level=1)
        images.append({"id": image_id, "file_name": file_name, "height": int(img.shape[0]),
                       "width": int(img.shape[1])})
        for s in shapes:
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": s.label + 1,
                "bbox": mask_to_box(s.mask),
                "area": int(s.mask.sum()),
                "iscrowd": 0,
            })
    return {
        "info": {"description": f"gn_detect synthetic shapes ({split})", "version": str(GENERATOR_VERSION)},
        "licenses": [],
        "categories": shapes_categories(num_classes),
        "images": images,
        "annotations": annotations,
    }


@contextlib.contextmanager
def _lock(path: Path) -> Iterator[None]:
    # several ranks / jobs may call ensure_shapes_dataset at once: one generates, others wait
    if fcntl is None:  # non-POSIX: rely on the atomic rename alone
        yield
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _read_meta(root: Path) -> dict[str, Any] | None:
    try:
        return json.loads((root / META_FILE).read_text())
    except (OSError, ValueError):
        return None


def shapes_categories(num_classes: int) -> list[dict[str, Any]]:
    """The categories of a shapes dataset of ``num_classes`` classes, as its jsons list them."""
    return [{"id": k + 1, "name": SHAPE_CLASSES[k], "supercategory": "shape"} for k in range(num_classes)]


def ensure_shapes_dataset(
    root: str | Path,
    *,
    num_train: int = 300,
    num_val: int = 100,
    image_size: int = 256,
    seed: int = 0,
    num_classes: int = 5,
    image_format: str = "jpg",
    max_objects: int = 6,
    min_radius: float = 0.035,
    max_radius: float = 0.3,
    clutter: float = 1.0,
    class_colours: bool = False,
) -> Path:
    """Make sure `root` holds the shapes dataset for these parameters; return root.

    Idempotent: if root/shapes_meta.json records the same parameters (and generator version)
    nothing happens. Otherwise the dataset is generated in a temporary sibling folder and
    renamed into place, so a killed generation never leaves a half dataset at `root`.
    """
    if not 1 <= num_classes <= len(SHAPE_CLASSES):
        raise ValueError(f"num_classes must be in 1..{len(SHAPE_CLASSES)}, got {num_classes}")
    if image_format not in ("jpg", "png"):
        raise ValueError(f"image_format must be 'jpg' or 'png', got {image_format!r}")
    if image_size < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    if not 0 < min_radius <= max_radius <= 0.45:
        raise ValueError(f"shape radii must satisfy 0 < min_radius <= max_radius <= 0.45 (fractions of the "
                         f"short side), got {min_radius} and {max_radius}")
    if clutter < 0:
        raise ValueError(f"clutter must be >= 0, got {clutter}")
    style = {"min_radius": float(min_radius), "max_radius": float(max_radius), "clutter": float(clutter),
             "class_colours": bool(class_colours)}
    root = Path(root).absolute()
    meta = {
        "generator": "gn_detect.data.synthetic.shapes",
        "version": GENERATOR_VERSION,
        "params": {"num_train": int(num_train), "num_val": int(num_val), "image_size": int(image_size),
                   "seed": int(seed), "num_classes": int(num_classes), "image_format": image_format,
                   "max_objects": int(max_objects), **style},
    }

    def up_to_date() -> bool:
        return _read_meta(root) == meta and all((root / v["ann"]).is_file() for v in SHAPES_LAYOUT.values())

    if up_to_date():
        return root
    with _lock(root.parent / f".{root.name}.lock"):
        if up_to_date():  # another process generated it while we waited
            return root
        if root.exists() and _read_meta(root) is None and any(root.iterdir()):
            raise FileExistsError(f"{root} exists, is not empty and is not a shapes dataset "
                                  f"(no {META_FILE}); refusing to replace it. Choose another root.")
        tmp = root.parent / f".{root.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            logger.info("generating shapes dataset at %s (%s)", root, meta["params"])
            for split, n in (("train", num_train), ("val", num_val)):
                coco = generate_split(tmp, split, n, image_size=image_size, seed=seed, num_classes=num_classes,
                                      image_format=image_format, max_objects=max_objects, **style)
                write_json_atomic(tmp / SHAPES_LAYOUT[split]["ann"], coco, indent=None)
            write_json_atomic(tmp / META_FILE, meta)  # last: marks the folder complete
            old = None
            if root.exists():  # stale parameters: move aside, swap in, then delete
                old = root.parent / f".{root.name}.old-{uuid.uuid4().hex[:8]}"
                os.rename(root, old)
            os.rename(tmp, root)
            if old is not None:
                shutil.rmtree(old, ignore_errors=True)
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
    return root
