"""Convert Pascal VOC (xml) and YOLO (txt) annotations to a COCO instances json.

Conventions (see docs/data.md):
* VOC boxes are 1-based inclusive pixel indices: xmin=1, xmax=W covers the whole width. COCO
  boxes are 0-based continuous pixel edges, so x = xmin - 1, w = xmax - xmin + 1 (as
  detectron2's VOC loader does). Integer VOC boxes therefore round-trip exactly.
* VOC `difficult` objects: kept as normal annotations with an extra "difficult": 1 field by
  default (detectron2 trains on them too); difficult="crowd" marks them iscrowd=1 so COCOeval
  ignores them (close to VOC's evaluation), difficult="skip" drops them.
* YOLO lines are `class cx cy w h` normalized to [0, 1]; image sizes come from the image
  headers. A missing or empty label file means an image without objects. Segment lines
  (`class x1 y1 x2 y2 ...`) are accepted and converted to their bounding box.
* Nothing is written that training would refuse: a box that is not finite, empty or entirely
  outside its image is dropped, one partly outside is clipped, an image that cannot be read
  (gn_detect/image_io.py) is left out with its labels; each is counted in the output's
  ``info.dropped`` (reason -> count; ``clipped_box`` boxes are kept). A VOC box with
  xmax == xmin or ymax == ymin (a point or a line: its annotator gave no extent) is
  ``degenerate_box`` too, although the inclusive convention would make it 1 px wide.
* ``keep`` (``--keep`` of tools/convert_dataset.py) selects classes: only those categories
  are written (ids 1..k in the order given), the other classes' boxes are dropped and counted
  as ``other_class``; images stay (as background where all their boxes went).
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from gn_detect.image_io import problem_of, read_header
from gn_detect.io import write_json_atomic

from .checks import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class ConversionError(DataError):
    """A source annotation that cannot be converted; the message names the file (and line)."""


def _coco_dict(images: list[dict[str, Any]], annotations: list[dict[str, Any]], names: Sequence[str],
               description: str, dropped: Counter[str]) -> dict[str, Any]:
    return {
        "info": {"description": description, "dropped": {k: dropped[k] for k in sorted(dropped)}},
        "licenses": [],
        "categories": [{"id": i + 1, "name": n, "supercategory": "none"} for i, n in enumerate(names)],
        "images": images,
        "annotations": annotations,
    }


def select_classes(data: dict[str, Any], keep: Sequence[str] | None) -> dict[str, Any]:
    """``data`` with only the categories named in ``keep`` (ids 1..k in that order) and their
    annotations; the others' boxes counted in ``info.dropped["other_class"]``. None: unchanged."""
    if keep is None:
        return data
    by_name = {c["name"]: c["id"] for c in data["categories"]}
    if unknown := [n for n in keep if n not in by_name]:
        raise ConversionError(f"--keep names {unknown} are not classes of the dataset {sorted(by_name)}; "
                              "check their spelling")
    if len(set(keep)) != len(keep):
        raise ConversionError(f"--keep lists a class more than once: {list(keep)}")
    new_id = {by_name[n]: i + 1 for i, n in enumerate(keep)}
    anns = [dict(a, category_id=new_id[a["category_id"]]) for a in data["annotations"] if a["category_id"] in new_id]
    for i, a in enumerate(anns, start=1):
        a["id"] = i
    dropped = Counter(data["info"]["dropped"])
    if n_other := len(data["annotations"]) - len(anns):
        dropped["other_class"] += n_other
    cats = {c["id"]: c for c in data["categories"]}
    out = _coco_dict(data["images"], anns, list(keep), data["info"]["description"], dropped)
    out["categories"] = [dict(cats[by_name[n]], id=new_id[by_name[n]]) for n in keep]
    return out


def read_text(path: str | Path, what: str) -> str:
    """A text file the converter needs (UTF-8), or a one-line ConversionError naming it and ``what`` it is."""
    try:
        return Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConversionError(f"{what} not found: {path}; check the path") from None
    except UnicodeDecodeError as e:
        raise ConversionError(f"{path}: the {what} is not UTF-8 text (byte {e.start}: {e.reason}); re-save it as "
                              "UTF-8 text") from None
    except OSError as e:
        raise ConversionError(f"cannot read the {what} {path}: {e.strerror or e}") from None


def read_names(path: str | Path) -> list[str]:
    """Class names, one per line (classes.txt / obj.names); blank lines ignored."""
    names = [ln.strip() for ln in read_text(path, "class names file").splitlines() if ln.strip()]
    if not names:
        raise ConversionError(f"{path}: no class names found")
    return names


# ----------------------------------------------------------------------------- VOC


def _text(node: ET.Element, tag: str, file: Path) -> str:
    child = node.find(tag)
    if child is None or child.text is None:
        raise ConversionError(f"{file}: <{tag}> missing in <{node.tag}>")
    return child.text.strip()


def _size_value(node: ET.Element, tag: str, file: Path) -> int:
    """<size>'s <width>/<height> as an int (0 when absent); a one-line error when not a number."""
    if node.find(tag) is None:
        return 0
    text = _text(node, tag, file)
    try:
        return int(float(text))
    except (ValueError, OverflowError):
        raise ConversionError(f"{file}: <{tag}> is {text!r}, not a number; fix the xml (or delete <size> and pass "
                              "--images to read the size from the image)") from None


def _xywh(x1: float, y1: float, x2: float, y2: float, w: int, h: int,
          dropped: Counter[str]) -> list[float] | None:
    """A box given by its edges as a COCO [x, y, w, h] inside the w x h image, clipped; None (and
    counted in ``dropped``) when it is not finite, empty, or entirely outside the image."""
    if not all(math.isfinite(v) for v in (x1, y1, x2, y2)) or x2 <= x1 or y2 <= y1:
        dropped["degenerate_box"] += 1
        return None
    c = [min(max(x1, 0.0), w), min(max(y1, 0.0), h), min(max(x2, 0.0), w), min(max(y2, 0.0), h)]
    if c[2] - c[0] <= 0 or c[3] - c[1] <= 0:
        dropped["outside_box"] += 1
        return None
    if c != [x1, y1, x2, y2]:
        dropped["clipped_box"] += 1  # kept, clipped: counted, not dropped
    return [c[0], c[1], c[2] - c[0], c[3] - c[1]]


def _voc_box(xmin: float, ymin: float, xmax: float, ymax: float, w: int, h: int,
             dropped: Counter[str]) -> list[float] | None:
    """A VOC box (1-based inclusive) as COCO [x, y, w, h] (``_xywh``); a point or a line
    (xmax <= xmin or ymax <= ymin: no extent) is a counted ``degenerate_box``."""
    if xmax <= xmin or ymax <= ymin:
        dropped["degenerate_box"] += 1
        return None
    return _xywh(xmin - 1.0, ymin - 1.0, xmax, ymax, w, h, dropped)  # -> 0-based pixel edges


def _image_size(path: Path) -> tuple[int, int]:
    try:
        return read_header(path)[0]
    except OSError as e:
        raise ConversionError(f"cannot read the image size ({e}); fix or remove the file") from None


def voc_to_coco(
    xml_files: Sequence[str | Path] | str | Path,
    *,
    class_names: Sequence[str] | None = None,
    image_dir: str | Path | None = None,
    difficult: str = "keep",
) -> dict[str, Any]:
    """VOC xml files (or a folder of them) -> COCO dict.

    class_names fixes category ids (i -> id i + 1); default: sorted names found. image_dir is
    only needed when an xml lacks <size>. Image ids are 1..N in sorted file-name order.
    """
    if difficult not in ("keep", "crowd", "skip"):
        raise ValueError(f"difficult must be 'keep', 'crowd' or 'skip', got {difficult!r}")
    if isinstance(xml_files, (str, Path)) and Path(xml_files).is_dir():
        files = sorted(Path(xml_files).glob("*.xml"))
    elif isinstance(xml_files, (str, Path)):
        files = [Path(xml_files)]
    else:
        files = sorted(Path(f) for f in xml_files)
    if not files:
        raise ConversionError(f"no VOC xml files found in {xml_files}")

    parsed: list[tuple[Path, ET.Element]] = []
    for f in files:
        try:
            parsed.append((f, ET.parse(f).getroot()))
        except (ET.ParseError, OSError) as e:
            raise ConversionError(f"{f}: cannot parse VOC xml: {e}") from e
    if class_names is None:
        class_names = sorted({_text(o, "name", f) for f, r in parsed for o in r.iter("object")})
    name_to_id = {n: i + 1 for i, n in enumerate(class_names)}

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    for image_id, (f, root) in enumerate(parsed, start=1):
        file_name = _text(root, "filename", f)
        size = root.find("size")
        w = _size_value(size, "width", f) if size is not None else 0
        h = _size_value(size, "height", f) if size is not None else 0
        if w <= 0 or h <= 0:  # some VOC-style exporters write 0 or omit <size>
            if image_dir is None:
                raise ConversionError(f"{f}: no usable <size>; pass image_dir to read it from the image")
            w, h = _image_size(Path(image_dir) / file_name)
        images.append({"id": image_id, "file_name": file_name, "width": w, "height": h})
        for obj in root.iter("object"):
            name = _text(obj, "name", f)
            if name not in name_to_id:
                raise ConversionError(f"{f}: class {name!r} not in class_names {list(class_names)}; to train on a "
                                      "subset of the classes, list every class in --names and the subset in --keep")
            diff_node = obj.find("difficult")
            is_difficult = diff_node is not None and (diff_node.text or "0").strip() not in ("0", "")
            if is_difficult and difficult == "skip":
                continue
            bnd = obj.find("bndbox")
            if bnd is None:
                raise ConversionError(f"{f}: <object> {name!r} without <bndbox>")
            try:
                xmin, ymin, xmax, ymax = (float(_text(bnd, k, f)) for k in ("xmin", "ymin", "xmax", "ymax"))
            except ValueError as e:
                raise ConversionError(f"{f}: non-numeric <bndbox> for {name!r}: {e}") from e
            box = _voc_box(xmin, ymin, xmax, ymax, w, h, dropped)
            if box is None:
                continue
            x, y, bw, bh = box
            ann = {
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": name_to_id[name],
                "bbox": [x, y, bw, bh],
                "area": bw * bh,
                "iscrowd": int(is_difficult and difficult == "crowd"),
            }
            if is_difficult:
                ann["difficult"] = 1
            annotations.append(ann)
    return _coco_dict(images, annotations, class_names, "converted from Pascal VOC", dropped)


# ----------------------------------------------------------------------------- YOLO


def yolo_to_coco(
    image_dir: str | Path,
    label_dir: str | Path | None = None,
    *,
    class_names: Sequence[str] | str | Path,
) -> dict[str, Any]:
    """YOLO txt labels -> COCO dict.

    image_dir: the images (sizes read from headers). label_dir: the txt files, same stems
    (default: the `labels` folder next to an `images` folder, else image_dir itself).
    class_names: list, or a path to classes.txt / obj.names (class i -> category id i + 1).
    Image ids are 1..N in sorted file-name order; file_name is relative to image_dir.
    """
    image_dir = Path(image_dir)
    if label_dir is None:
        parts = image_dir.parts
        label_dir = (Path(*[("labels" if p == "images" else p) for p in parts])
                     if "images" in parts else image_dir)
    label_dir = Path(label_dir)
    if not label_dir.is_dir():  # else every image would silently become a background image
        raise ConversionError(f"YOLO label folder not found: {label_dir} (pass label_dir / --labels)")
    names = read_names(class_names) if isinstance(class_names, (str, Path)) else list(class_names)
    files = sorted(p for p in image_dir.rglob("*") if p.suffix.lower() in IMAGE_EXTENSIONS)
    if not files:
        raise ConversionError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) found under {image_dir}")

    images: list[dict[str, Any]] = []
    annotations: list[dict[str, Any]] = []
    dropped: Counter[str] = Counter()
    for p in files:
        rel = p.relative_to(image_dir)
        try:
            (W, H), _ = read_header(p)
        except OSError as e:  # the image and its labels are left out, counted
            dropped[problem_of(e)] += 1
            continue
        image_id = len(images) + 1
        images.append({"id": image_id, "file_name": rel.as_posix(), "width": W, "height": H})
        txt = (label_dir / rel).with_suffix(".txt")
        if not txt.is_file():
            continue  # YOLO convention: no label file = background image
        for lineno, line in enumerate(read_text(txt, "YOLO label file").splitlines(), start=1):
            fields = line.split()
            if not fields:
                continue
            try:
                cls = int(fields[0])
                vals = [float(v) for v in fields[1:]]
            except ValueError:
                raise ConversionError(f"{txt}:{lineno}: not numbers: {line!r}") from None
            if not 0 <= cls < len(names):
                raise ConversionError(f"{txt}:{lineno}: class {cls} outside 0..{len(names) - 1} "
                                      f"({len(names)} names)")
            if len(vals) == 4:
                cx, cy, bw, bh = vals
                edges = ((cx - bw / 2) * W, (cy - bh / 2) * H, (cx + bw / 2) * W, (cy + bh / 2) * H)
            elif len(vals) >= 6 and len(vals) % 2 == 0:  # segment polygon: its bounding box
                xs, ys = vals[0::2], vals[1::2]
                edges = (min(xs) * W, min(ys) * H, max(xs) * W, max(ys) * H)
            else:
                raise ConversionError(f"{txt}:{lineno}: expected 'class cx cy w h', got {len(fields)} fields")
            box = _xywh(*edges, W, H, dropped)
            if box is None:
                continue
            x, y, w, h = box
            annotations.append({
                "id": len(annotations) + 1,
                "image_id": image_id,
                "category_id": cls + 1,
                "bbox": [x, y, w, h],
                "area": w * h,
                "iscrowd": 0,
            })
    if not images:
        raise ConversionError(f"none of the {len(files)} images under {image_dir} could be read ({dict(dropped)})")
    return _coco_dict(images, annotations, names, "converted from YOLO", dropped)


def write_coco(data: dict[str, Any], path: str | Path) -> Path:
    """Write a COCO dict atomically (one compact line); returns the path."""
    return write_json_atomic(path, data, indent=None)
