"""The one way gn-detect opens an image file: datasets, their checks, evaluation figures, predict
and the converters all call :func:`read_header` (size and mode, nothing decoded) or
:func:`read_rgb` (decoded 8-bit RGB).

Policy, the same everywhere:

* **Size limit**: an image of more than :data:`MAX_PIXELS` pixels (PIL's decompression-bomb
  limit, ``PIL.Image.MAX_IMAGE_PIXELS``) is refused from its header, before anything is decoded,
  with :class:`ImageTooLarge`; a dataset counts it as ``image_too_large``.
* **Mode**: grayscale, CMYK, RGBA, palette, 16-bit and float images become 8-bit RGB (:func:`to_rgb`).
* **EXIF orientation** is not applied (as torchvision and pycocotools do): the pixels are the
  stored ones, whose size is the size COCO jsons record.

Every failure is an ``OSError`` (:class:`ImageTooLarge` included) naming the file, so callers
catch one class; :func:`problem_of` turns it into the skip reason a dataset counts.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ImageTooLarge", "MAX_PIXELS", "problem_of", "read_header", "read_rgb", "read_rgb_tensor", "to_rgb"]

MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485

# Everything PIL raises for a file it cannot read (a truncated, corrupt or foreign file).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageTooLarge(OSError):
    """The image has more pixels than :data:`MAX_PIXELS`; nothing of it was decoded."""


def problem_of(exc: BaseException) -> str:
    """The skip reason of a failed open: ``missing_image``, ``image_too_large`` or ``unreadable_image``."""
    if isinstance(exc, FileNotFoundError):
        return "missing_image"
    if isinstance(exc, ImageTooLarge):
        return "image_too_large"
    return "unreadable_image"


def _open(path: str | Path) -> Image.Image:
    """PIL's lazy open (header only) with the size limit; every failure an OSError naming the file."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(path)
    except FileNotFoundError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise ImageTooLarge(f"{path}: {e}") from None
    except _PIL_ERRORS as e:
        raise OSError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    w, h = im.size
    if w * h > MAX_PIXELS:
        im.close()
        raise ImageTooLarge(f"{path}: {w}x{h} = {w * h} pixels is more than the limit of {MAX_PIXELS} "
                            "(PIL's decompression-bomb guard); downscale the image")
    return im


def read_header(path: str | Path, *, decode: bool = False) -> tuple[tuple[int, int], str]:
    """``((width, height), mode)`` from the header. With ``decode`` the pixels are decoded too, to
    catch a truncated file (JPEGs in draft mode: the whole entropy-coded stream is read at ~1/8
    of a full decode's cost)."""
    im = _open(path)
    try:
        size, mode = im.size, im.mode
        if decode:
            if im.format == "JPEG":
                im.draft("RGB", (max(1, size[0] // 8), max(1, size[1] // 8)))
            im.load()
    except _PIL_ERRORS as e:
        raise OSError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None
    finally:
        im.close()
    return size, mode


def read_rgb(path: str | Path) -> Image.Image:
    """The decoded image as 8-bit RGB (loaded, the file closed)."""
    im = _open(path)
    try:
        im.load()
        rgb = to_rgb(im)
        if rgb is im:  # closing `im` below must not destroy what is returned
            rgb = im.copy()
    except _PIL_ERRORS as e:
        raise OSError(f"{path}: cannot decode the image ({type(e).__name__}: {e})") from None
    finally:
        im.close()
    return rgb


def read_rgb_tensor(path: str | Path) -> "torch.Tensor":
    """The decoded image as a uint8 3xHxW RGB tensor, the same pixels as :func:`read_rgb`.

    An 8-bit RGB JPEG (most detection data) is decoded by ``torchvision.io.decode_jpeg`` (the
    same libjpeg result as PIL's, about 1.6x faster, no PIL image in between); anything else goes
    through :func:`read_rgb`. The header is read by PIL first, so the size limit holds."""
    import torch
    from torchvision.io import ImageReadMode, decode_jpeg

    im = _open(path)
    try:
        jpeg_rgb = im.format == "JPEG" and im.mode == "RGB"
    finally:
        im.close()
    if not jpeg_rgb:
        return torch.from_numpy(np.asarray(read_rgb(path), dtype=np.uint8).copy()).permute(2, 0, 1)
    with open(path, "rb") as f:
        data = torch.frombuffer(bytearray(f.read()), dtype=torch.uint8)
    try:
        return decode_jpeg(data, mode=ImageReadMode.RGB)
    except RuntimeError as e:
        raise OSError(f"{path}: cannot decode the image (RuntimeError: {str(e).splitlines()[0]})") from None


def to_rgb(im: Image.Image) -> Image.Image:
    """Convert any PIL mode to 8-bit RGB (grayscale, CMYK, RGBA, palette, 16-bit)."""
    if im.mode == "RGB":
        return im
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit grayscale: PIL's convert would clip, so rescale to 8 bit by the max value
        a = np.asarray(im, dtype=np.float64)
        top = 65535.0 if im.mode.startswith("I;16") else max(float(a.max()), 1.0)
        a = np.clip(a / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "F":
        a = np.asarray(im, dtype=np.float64)
        a = np.clip(a * 255.0 + 0.5 if a.max() <= 1.0 else a, 0, 255).astype(np.uint8)
        return Image.fromarray(a, "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")  # avoids PIL's palette-transparency warning
    return im.convert("RGB")
