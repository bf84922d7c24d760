"""tools/predict.py: detections on an image file or a folder of images, at the per-class
thresholds tuned in a run's report.json (or one ``score_thresh``), those of a user's threshold file
(``thresholds``: {class name: threshold} replacing the listed classes'), written as COCO results.

Output folder::

    detections.json   COCO results list: {"image_id", "category_id", "bbox" [x, y, w, h] in
                      original pixels, "score"}; ``COCO("images.json").loadRes("detections.json")``
    images.json       {"info": {checkpoint, thresholds used, skipped files}, "images": [{"id",
                      "file_name" (relative to the input folder), "width", "height"}], "categories":
                      [{"id", "name"}], "annotations": []}
    drawn/<file>      each input with its boxes, class names and scores (with ``draw``)

A folder is read with its subfolders; files are opened by gn_detect/image_io.py (an image over the
size limit or unreadable is skipped, with its reason in images.json). report.json thresholds
must be null or finite numbers in [0, 1]: anything else is refused in one line naming the file
and the class.

Every image goes through the evaluation's test transform (the run's ``data.min_size_test`` and
``data.max_size``; the model normalizes as its config says); grayscale, palette, 16-bit and RGBA images become
RGB as in training. Images are batched in groups of similar padded size, on the GPU when present.
"""
from __future__ import annotations

import json
import logging
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig
from PIL import Image
from tqdm import tqdm

from gn_detect.data import build_transform, collate, data_config
from gn_detect.image_io import problem_of, read_header, read_rgb
from gn_detect.data.transforms import resize_shape
from gn_detect.engine.device import amp_dtype, resolve_device
from gn_detect.engine.inference import to_coco_results
from gn_detect.io import write_json_atomic
from gn_detect.runs import RunFolder, run_folder_of

from .draw import draw_detections, drawn_name
from .saved import load_for_inference

__all__ = ["IMAGE_EXTENSIONS", "list_images", "class_thresholds", "predict_run"]

log = logging.getLogger(__name__)

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp", ".gif", ".ppm", ".pgm")


def _resolve(path: str, base: Path) -> Path:
    p = Path(path).expanduser()
    return p if p.is_absolute() else base / p


def image_name(file: Path, input_path: Path) -> str:
    """An input image's name in the outputs: its path relative to the input folder (posix), or
    the file's name when the input is that file."""
    return file.name if file == input_path else file.relative_to(input_path).as_posix()


def list_images(path: Path, exclude: Path | None = None) -> tuple[list[tuple[Path, int, int]], list[dict[str, str]]]:
    """``[(file, width, height)]`` of ``path`` (a file, or a folder's image files, subfolders
    included, sorted by path) from the image headers (gn_detect/data/image_io.py: oversized
    images are refused unread), and the files skipped; ValueError when none is left. Nothing
    under ``exclude`` (predict's output folder, which may lie inside the input) is listed: its
    drawn images are never read back as input."""
    skip = exclude.resolve() if exclude is not None else None
    files = [path] if path.is_file() else sorted(
        p for p in path.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not (skip is not None and (skip == p.resolve() or skip in p.resolve().parents)))
    found, skipped = [], []
    for f in files:
        try:
            (w, h), _ = read_header(f)
            found.append((f, w, h))
        except OSError as e:
            skipped.append({"file": image_name(f, path), "reason": problem_of(e), "detail": str(e).splitlines()[0]})
    if not found:
        what = f"{path} is not a readable image" if path.is_file() else (
            f"{path} holds no readable image ({', '.join(IMAGE_EXTENSIONS)}, subfolders included)")
        raise ValueError(f"input: {what}; give an image file or a folder of images")
    for s in skipped:
        log.warning("skipping %s: %s", s["file"], s["detail"])
    return found, skipped


def _report_path(cfg: DictConfig, base: Path, ckpt_path: Path) -> Path | None:
    """The report.json to read thresholds from (None with ``score_thresh``, or with a threshold
    file when the run has no report: the file must then list every class); checked to exist."""
    if cfg.score_thresh is not None:
        return None
    path = _resolve(cfg.report, base) if cfg.report else RunFolder(run_folder_of(ckpt_path)).report
    if not path.is_file():
        if cfg.thresholds and not cfg.report:
            return None
        raise FileNotFoundError(f"no report.json with tuned thresholds at {path}; give score_thresh=<0..1> for one "
                                "threshold, thresholds=<json {class: threshold}>, or "
                                "report=<run>/evaluate/<time>/report.json")
    return path


def read_threshold_file(path: Path) -> dict[str, float]:
    """{class name: threshold} of a threshold file: a json object {name: number in [0, 1] or null
    (never predicted: ``inf``)}, or a report.json (its per_class thresholds); anything else is one
    ValueError line naming the file."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ValueError(f"thresholds={path}: not a readable json ({type(e).__name__}: {e}); give a json object "
                         '{"class name": threshold in [0, 1] or null}') from None
    if not isinstance(data, dict):
        raise ValueError(f"thresholds={path}: a json {type(data).__name__}, not an object "
                         '{"class name": threshold in [0, 1] or null}')
    if isinstance(data.get("per_class"), list):  # a report.json: its tuned thresholds, by class name
        data = {c.get("name"): c.get("threshold") for c in data["per_class"] if isinstance(c, dict)}
    return {str(name): _threshold(value, f"thresholds={path}: the threshold of class {name!r}",
                                  "give a number in [0, 1], or null to never predict the class")
            for name, value in data.items()}


def class_thresholds(report_path: Path | None, score_thresh: float | None, categories: list[dict[str, Any]],
                     own: dict[str, float] | None = None) -> tuple[dict[int, float], dict[str, Any]]:
    """category id -> threshold (``inf``: the class is never predicted), and a record of it.

    ``own`` ({class name: threshold}, :func:`read_threshold_file`) sets the classes it lists (a name
    that is not a class of the model: ValueError); the others come from ``score_thresh`` or, without
    it, from ``report.json``'s ``per_class[].threshold`` (null = disabled), which must list every
    category of the model, by id and name."""
    if own:
        names = {str(c["name"]): int(c["id"]) for c in categories}
        if unknown := [n for n in own if n not in names]:
            raise ValueError(f"thresholds file: {unknown} are not classes of the model ({list(names)[:20]}); check "
                             "their spelling")
        rest = [c for c in categories if str(c["name"]) not in own]
        thr, record = class_thresholds(report_path, score_thresh, rest) if rest else ({}, {})
        thr = {int(c["id"]): thr[int(c["id"])] if str(c["name"]) not in own else own[str(c["name"])]
               for c in categories}
        record = {**record, "source": "file" + (f"+{record['source']}" if rest else ""),
                  "file_classes": sorted(own),
                  "per_class": [{"id": cid, "threshold": None if math.isinf(t) else t} for cid, t in thr.items()]}
        return thr, record
    if report_path is None and score_thresh is None:
        raise ValueError(f"classes {[str(c['name']) for c in categories][:20]} have no threshold: the threshold file "
                         "does not list them and the run has no report.json; list them, or give score_thresh=<0..1>")
    if report_path is None:
        return ({int(c["id"]): float(score_thresh) for c in categories},
                {"source": "score_thresh", "score_thresh": float(score_thresh)})
    try:
        per_class = {int(c["cat_id"]): c for c in json.loads(report_path.read_text())["per_class"]}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ValueError(f"report {report_path} has no readable per_class thresholds ({type(e).__name__}: {e}); "
                         "give a report.json written by gn-detect, or score_thresh=<0..1>") from None
    wrong = [f"{c['id']} ({c['name']})" for c in categories
             if int(c["id"]) not in per_class or str(per_class[int(c["id"])].get("name")) != str(c["name"])]
    if wrong:
        raise ValueError(f"report {report_path} does not list the model's categories {', '.join(wrong[:5])}: it "
                         "belongs to another model; give that run's report=..., or score_thresh=<0..1>")
    thr = {int(c["id"]): _threshold(per_class[int(c["id"])].get("threshold"),
                                    f"report {report_path}: per_class threshold of class {c['id']} ({c['name']})",
                                    "the file was edited or damaged: re-run tools/evaluate.py to rewrite it, or give "
                                    "score_thresh=<0..1>") for c in categories}
    record = {"source": "report", "report": str(report_path),
              "per_class": [{"id": cid, "threshold": None if math.isinf(t) else t} for cid, t in thr.items()]}
    return thr, record


def _threshold(value: Any, what: str, fix: str) -> float:
    """A class's threshold from a file: null disables the class (``inf``); anything but a finite
    number in [0, 1] (NaN, a list, a string, true) is refused in one line, ``what`` and ``fix`` in it."""
    if value is None:
        return math.inf
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and 0 <= value <= 1
    if not ok:
        raise ValueError(f"{what} is {value!r}, not a number in [0, 1] or null; {fix}")
    return float(value)


def _groups(images: list[tuple[Path, int, int]], transform: Any, batch_size: int, div: int) -> list[list[int]]:
    """Indices in batches of at most ``batch_size`` images of the same or similar padded size."""
    def padded(i: int) -> tuple[int, int]:
        _, w, h = images[i]
        nh, nw, _ = resize_shape(h, w, transform.min_sizes[0], transform.max_size)
        return -(-nh // div), -(-nw // div)

    order = sorted(range(len(images)), key=lambda i: (padded(i), i))
    return [order[k:k + batch_size] for k in range(0, len(order), batch_size)]


def _load(path: Path) -> tuple[torch.Tensor, Image.Image]:
    rgb = read_rgb(path)
    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1), rgb


def _batch(images: list[tuple[Path, int, int]], group: list[int], transform: Any) -> tuple[list, list, list]:
    """(items for collate, PIL images, indices) of the group's decodable images."""
    items, pils, kept = [], [], []
    for i in group:
        try:
            pixels, pil = _load(images[i][0])
        except OSError as e:
            log.warning("skipping %s: cannot decode it (%s)", images[i][0].name, e)
            continue
        img, _, info = transform(pixels, torch.zeros(0, 4))
        items.append((img, {"image_id": i + 1, "size": info.size, "orig_size": tuple(pixels.shape[-2:])}))
        pils.append(pil)
        kept.append(i)
    return items, pils, kept


@torch.no_grad()
def _detect(model: torch.nn.Module, items: list, device: torch.device,
            label_to_cat_id: list[int], thresholds: dict[int, float]) -> list[dict[str, Any]]:
    images, targets, sizes = collate(items, model.size_divisibility)
    amp = amp_dtype("auto", device)
    with torch.autocast(device.type, dtype=amp or torch.float32, enabled=amp is not None):
        outputs = model(images.to(device), sizes)
    results = to_coco_results(outputs, targets, label_to_cat_id)
    return [r for r in results if r["score"] >= thresholds[r["category_id"]]]


def _run(cfg: DictConfig, found: list, files: list[str], loaded: Any, thresholds: dict[int, float],
         out: Path) -> tuple[list, set]:
    """Detections of every image (batched by size), drawing each as it goes; the ids done."""
    run_cfg = loaded.description["config"]
    transform = build_transform(data_config(run_cfg["data"]), train=False)
    device = resolve_device(cfg.device)
    model = loaded.model.to(device).eval()
    cats = loaded.categories
    finite = [t for t in thresholds.values() if math.isfinite(t)]
    if finite:  # a lower threshold than evaluation's must reach post-processing too
        model.test_cfg["score_thresh"] = min(model.test_cfg.get("score_thresh", 0.05), min(finite))
    label_to_cat_id, names = [int(c["id"]) for c in cats], {int(c["id"]): str(c["name"]) for c in cats}
    results, done = [], set()
    bar = tqdm(total=len(found), desc="predict", unit="img", disable=not sys.stderr.isatty(), dynamic_ncols=True)
    for group in _groups(found, transform, cfg.batch_size, model.size_divisibility):
        items, pils, kept = _batch(found, group, transform)
        dets = _detect(model, items, device, label_to_cat_id, thresholds) if items else []
        results += dets
        done.update(i + 1 for i in kept)
        if cfg.draw:
            for i, pil in zip(kept, pils):
                mine = [d for d in dets if d["image_id"] == i + 1]
                draw_detections(pil, mine, names, label_to_cat_id, out / "drawn" / drawn_name(files[i]))
        bar.update(len(group))
    bar.close()
    return sorted(results, key=lambda r: (r["image_id"], -r["score"])), done


def predict_run(cfg: DictConfig, base_dir: str | Path | None = None) -> dict[str, Any]:
    """tools/predict.py (``cfg`` on PredictConfig); returns a summary (module docstring)."""
    base = Path(base_dir or ".")
    input_path = _resolve(cfg.input, base)
    found, skipped = list_images(input_path, exclude=_resolve(cfg.output, base))
    names = [image_name(f, input_path) for f, _, _ in found]
    ckpt = _resolve(cfg.checkpoint, base)
    if not ckpt.is_file():
        raise FileNotFoundError(f"checkpoint not found: {ckpt}; give checkpoint=<run folder>/checkpoints/"
                                "model_final.pth or <run folder>/export/model_folded.pt")
    try:
        report_path = _report_path(cfg, base, ckpt)  # before loading anything
    except FileNotFoundError:
        load_for_inference(cfg, base)  # a file that is no gn-detect checkpoint says so, not the report
        raise
    own = read_threshold_file(_resolve(cfg.thresholds, base)) if cfg.thresholds else None
    out = _resolve(cfg.output, base)
    loaded, ckpt_path = load_for_inference(cfg, base)
    thresholds, record = class_thresholds(report_path, cfg.score_thresh, loaded.categories, own)
    out.mkdir(parents=True, exist_ok=True)
    results, done = _run(cfg, found, names, loaded, thresholds, out)
    skipped += [{"file": names[i], "reason": "unreadable_image"} for i in range(len(found)) if i + 1 not in done]
    images = [{"id": i + 1, "file_name": names[i], "width": w, "height": h}
              for i, (_, w, h) in enumerate(found) if i + 1 in done]
    info = {"description": "gn-detect predictions", "checkpoint": str(ckpt_path), "thresholds": record,
            "skipped": skipped}
    write_json_atomic(out / "detections.json", results, indent=None)
    write_json_atomic(out / "images.json", {"info": info, "images": images, "annotations": [],
                                            "categories": [{"id": int(c["id"]), "name": str(c["name"])}
                                                           for c in loaded.categories]})
    log.info("predict: %d images, %d detections -> %s", len(images), len(results), out)
    return {"images": len(images), "detections": len(results), "output": str(out),
            "thresholds": record["source"], "skipped": len(skipped)}
