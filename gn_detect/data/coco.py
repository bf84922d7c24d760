"""COCO-format detection dataset (images folder + instances json)."""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from pycocotools.coco import COCO

from gn_detect.cocoapi import coco_from_dict

from .checks import DataError, EmptyDatasetError, SkipLog, too_deep, validate_coco
from .json_checks import ParsedFiles, read_json_checks
from gn_detect.image_io import problem_of, read_rgb_chw, read_rgb_tensor
from .transforms import DetectionTransform

logger = logging.getLogger(__name__)


class SerializedList:
    """A read-only list whose items are pickled into one uint8 array (plus an offsets array).

    Forked DataLoader workers read it without writing to the pages (no per-item Python objects,
    hence no reference counts to update), so its memory is shared instead of copied into each
    worker (detectron2's ``DatasetFromList(serialize=True)``). Each read returns a fresh copy.
    """

    def __init__(self, items: Any) -> None:
        blobs = [np.frombuffer(pickle.dumps(x, protocol=pickle.HIGHEST_PROTOCOL), dtype=np.uint8) for x in items]
        self._ends = np.cumsum([len(b) for b in blobs], dtype=np.int64)
        self._data = np.concatenate(blobs) if blobs else np.zeros(0, dtype=np.uint8)

    def __len__(self) -> int:
        return len(self._ends)

    def __getitem__(self, index: int) -> Any:
        index = range(len(self._ends))[index]  # negative indices; IndexError past the end
        start = int(self._ends[index - 1]) if index > 0 else 0
        return pickle.loads(memoryview(self._data[start:int(self._ends[index])]))

    @property
    def nbytes(self) -> int:
        return int(self._data.nbytes + self._ends.nbytes)

# how many following items __getitem__ tries when an image fails to decode at run time
# (only possible with verify_images=False, or if a file changes under a running job)
_MAX_FALLBACKS = 8



def _decoder(decode: str) -> str:
    """``decode`` when known; for ``tensor`` torchvision.io is loaded now, in the process that
    builds the dataset, so forked loader workers share its pages (loaded by the first decode in
    each worker instead, it made most of every worker's memory private: docs/benchmarks.md)."""
    if decode not in ("pil", "tensor"):
        raise ValueError(f"decode={decode!r}: use 'tensor' (torchvision.io) or 'pil'")
    if decode == "tensor":
        import torchvision.io  # noqa: F401, PLC0415
    return decode


class CocoDetection(torch.utils.data.Dataset):
    """Detection dataset over an images folder and a COCO instances json.

    Items are `(image, target)`: image uint8 3xHxW 0-255 RGB (resized; the model normalizes), target
    {boxes Nx4 xyxy resized pixels, labels int64 0..K-1, image_id, orig_size (h, w),
    size (h, w), scale}. Crowd boxes are never in targets but stay in `.coco` for evaluation.

    An index may also be `(index, seed)`: the item's random transform is then drawn from a
    generator seeded with `seed` (the train batch sampler does this so that augmentation is
    reproducible and resumable regardless of DataLoader workers).
    """

    def __init__(
        self,
        image_dir: str | Path,
        ann_file: str | Path,
        *,
        transform: DetectionTransform | None = None,
        filter_empty: bool = False,
        verify_images: bool = True,
        name: str | None = None,
        parsed: ParsedFiles | None = None,
        decode: str = "pil",
        classes: Sequence[str] | None = None,
    ) -> None:
        self.image_dir = Path(image_dir)
        self.ann_file = Path(ann_file)
        self.name = name or self.ann_file.stem
        self.transform = transform or DetectionTransform(800, 1333, flip_prob=0.0)
        self.filter_empty = filter_empty
        self.verify_images = verify_images
        self.decode = _decoder(decode)

        # the json with data.classes selected, and its json-only checks: the pre-flight's, or read here
        read = (parsed.take(self.ann_file, classes) if parsed is not None else None) \
            or read_json_checks(self.ann_file, classes)
        data = read.data
        checked = validate_coco(data, self.image_dir, verify_images=verify_images, source=str(self.ann_file),
                                json_checked=read.checked, read_annotations=read.annotations)
        self.skip_log: SkipLog = checked.skips
        for ann_id in read.other:
            self.skip_log.add("other_class", ann_id)

        images, counts = checked.images, checked.box_counts
        if filter_empty:
            images, counts = self._drop_empty(images, counts)
        if not images:
            raise EmptyDatasetError(
                f"{self.ann_file}: no images left to load (listed: {len(data['images'])}, "
                f"skips: {self.skip_log.nonzero()}). Fix: check the json and images folder"
                + ("; or set data.filter_empty=false" if filter_empty else "") + "."
            )

        # contiguous labels follow the sorted ids of ALL categories in the json, not only those
        # present, so COCO's 1..90 map to 0..79 identically on every split
        self.categories = checked.categories
        self.label_to_cat_id: list[int] = [c["id"] for c in self.categories]
        self.cat_id_to_label: dict[int, int] = {cid: i for i, cid in enumerate(self.label_to_cat_id)}
        self.class_names: list[str] = [str(c.get("name", c["id"])) for c in self.categories]

        # flat arrays and one serialized buffer (detectron2's DatasetFromList(serialize=True)):
        # DataLoader workers read them without touching Python objects' reference counts, so the
        # pages stay shared instead of being copied into every worker
        try:  # pickling recurses: a value nested some hundreds deep that the parser took is refused here
            self._records = SerializedList(images)  # the image entries
            self._coco_other: bytes | None = pickle.dumps(  # info, licenses
                {k: v for k, v in data.items() if k not in ("images", "annotations", "categories")})
        except RecursionError:
            raise too_deep(self.ann_file) from None
        self._box_ends = np.cumsum(counts)
        self._boxes_flat = checked.boxes  # the images' boxes in their order (an image dropped here has none)
        # category ids -> labels: label_to_cat_id is sorted (checks.py sorts the categories by id)
        # and holds every id a kept box has
        self._labels_flat = np.searchsorted(np.asarray(self.label_to_cat_id, dtype=np.int64),
                                            checked.cat_ids).astype(np.int64)
        self._ids = np.asarray([e["id"] for e in images], dtype=np.int64)
        self._num_boxes = int(counts.sum())
        # width / height from the json: grouping needs no image decoding
        self.aspect_ratios: np.ndarray = np.asarray([e["width"] / e["height"] for e in images], dtype=np.float64)

        # .coco holds exactly the dataset's images and the checked annotations (crowd included,
        # boxes clipped), so COCOeval sees the same ground truth the model was trained against.
        # Built on first use only (evaluation); until then the images are the records above and
        # the annotations flat arrays (no per-annotation objects: cheap to build, shared pages).
        self._gt = checked.annotations.select(np.isin(checked.annotations.image_ids, self._ids))
        self._coco = None
        del data, read, checked, images

        self.skip_log.log(self.name)
        logger.info("%s: %d images, %d boxes, %d classes from %s", self.name, len(self),
                    self._num_boxes, self.num_classes, self.ann_file)

    def _drop_empty(self, images: list, counts: np.ndarray) -> tuple[list, np.ndarray]:
        """The images that hold a box, and their box counts (data.filter_empty); the others counted as
        ``filtered_empty``."""
        for e, n in zip(images, counts.tolist()):
            if not n:
                self.skip_log.add("filtered_empty", e["id"])
        return [e for e, n in zip(images, counts.tolist()) if n], counts[counts > 0]

    # ------------------------------------------------------------------ info

    @property
    def num_classes(self) -> int:
        return len(self.label_to_cat_id)

    @property
    def skipped(self) -> dict[str, int]:
        """reason -> count for every check (zeros included); see checks.SKIP_REASONS."""
        return dict(self.skip_log.counts)

    @property
    def image_ids(self) -> list[int]:
        """The json ids of the dataset's images, in dataset order (a new list each call)."""
        return self._ids.tolist()

    @property
    def coco(self) -> COCO:
        """pycocotools ``COCO`` of exactly the dataset's images and checked annotations (crowd
        included); built on first use, so training workers never hold one."""
        if self._coco is None:
            dataset = pickle.loads(self._coco_other)
            dataset.update(categories=self.categories, images=list(self._records), annotations=self._gt.records())
            self._coco_other = self._gt = None
            self._coco = coco_from_dict(dataset)
        return self._coco

    @property
    def num_annotations(self) -> int:
        """Non-crowd training boxes over all images."""
        return self._num_boxes

    def __len__(self) -> int:
        return len(self._ids)

    def image_info(self, index: int) -> dict[str, Any]:
        """The image's json entry (width / height filled in); a fresh copy."""
        return self._records[index]

    def image_path(self, index: int) -> Path:
        return self.image_dir / self._records[index]["file_name"]

    def annotations(self, index: int) -> tuple[np.ndarray, np.ndarray]:
        """(boxes xyxy in original pixels, contiguous labels) without loading the image; fresh arrays."""
        index = range(len(self))[index]
        start, end = int(self._box_ends[index - 1]) if index > 0 else 0, int(self._box_ends[index])
        return self._boxes_flat[start:end].copy(), self._labels_flat[start:end].copy()

    # ------------------------------------------------------------------ loading

    def read_image(self, index: int) -> torch.Tensor:
        """Decode image `index` as uint8 3xHxW RGB; raises OSError with the path on failure."""
        info = self.image_info(index)
        path = self.image_dir / info["file_name"]
        if self.decode == "tensor":
            image = read_rgb_tensor(path)
        else:
            image = read_rgb_chw(path)
        if tuple(image.shape[-2:]) != (info["height"], info["width"]):
            raise OSError(f"{path}: size {image.shape[-1]}x{image.shape[-2]} != json "
                          f"{info['width']}x{info['height']}")
        return image

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, dict[str, Any]]:
        if isinstance(key, tuple):
            index, seed = int(key[0]), int(key[1])
            generator: torch.Generator | None = torch.Generator().manual_seed(seed)
        else:
            index, generator = int(key), None
        if index < 0:
            index += len(self)
        if generator is None:  # evaluation order: an unreadable image is marked, never replaced
            try:
                return self._make_item(index, self.read_image(index), None)
            except OSError as e:
                logger.warning("%s: cannot read %s (%s); the evaluation skips it", self.name,
                               self.image_path(index), e)
                return self._skipped_item(index, e)
        for attempt in range(_MAX_FALLBACKS + 1):
            try:
                image = self.read_image(index)
                break
            except OSError as e:
                # never crash mid-epoch: log and use the next image (deterministic choice)
                if attempt == _MAX_FALLBACKS:
                    raise DataError(  # a ValueError: the command ends in this one line, exit status 1
                        f"{self.name}: {_MAX_FALLBACKS + 1} images in a row failed to load, last: {e}. " + (
                            "They were checked when the run started, so they changed or were removed since "
                            f"(the images folder {self.image_dir} is read throughout the run). Fix: restore the "
                            "images (re-running resumes), or keep the dataset unchanged while a run reads it"
                            if self.verify_images else
                            "Set data.verify_images=true to find and skip them up front.")
                    ) from e
                logger.warning("%s: cannot read %s (%s); using the next image instead",
                               self.name, self.image_path(index), e)
                index = (index + 1) % len(self)
        return self._make_item(index, image, generator)

    def _skipped_item(self, index: int, error: OSError) -> tuple[torch.Tensor, dict[str, Any]]:
        """A stand-in for an image that cannot be read at evaluation time: a small blank image whose
        target says ``skipped`` (with the reason), so inference drops its output and the
        evaluation leaves the image out, counted (gn_detect/engine/inference.py)."""
        info = self.image_info(index)
        h, w = min(info["height"], 64), min(info["width"], 64)
        image, target = self._make_item(index, torch.zeros(3, h, w, dtype=torch.uint8), None)
        target["skipped"] = problem_of(error)
        return image, target

    def _make_item(self, index: int, image: torch.Tensor,
                   generator: torch.Generator | None) -> tuple[torch.Tensor, dict[str, Any]]:
        h, w = image.shape[-2:]
        boxes, labels = (torch.from_numpy(a) for a in self.annotations(index))
        image, boxes, info = self.transform(image, boxes, generator)
        target = {
            "boxes": boxes,
            "labels": labels,
            "image_id": int(self._ids[index]),
            "orig_size": (int(h), int(w)),
            "size": info.size,
            "scale": float(info.scale),
            "flipped": info.flipped,
        }
        return image, target

    def __repr__(self) -> str:
        return (f"CocoDetection(name={self.name!r}, images={len(self)}, classes={self.num_classes}, "
                f"transform={self.transform})")


__all__ = ["CocoDetection"]
