"""The one way gn-detect opens an image file: datasets, their checks, evaluation figures, predict
and the converters all call :func:`read_header` (size and mode, nothing decoded) or
:func:`read_rgb` (decoded 8-bit RGB).

Policy, the same everywhere:

* **Size limit**: an image of more than :data:`MAX_PIXELS` pixels (PIL's decompression-bomb
  limit, ``PIL.Image.MAX_IMAGE_PIXELS``) is refused from its header, before anything is decoded,
  with :class:`ImageTooLarge`; a dataset counts it as ``image_too_large``.
* **Mode**: grayscale, CMYK, RGBA, palette, 16-bit and float images become 8-bit RGB (:func:`to_rgb`).
* **Regular files only**: a path that is a FIFO, socket or device is refused from ``os.stat``,
  never opened (reading a FIFO blocks forever), with :class:`NotARegularFile`; a dataset counts
  it as ``not_a_regular_file``.
* **EXIF orientation** is not applied (as torchvision and pycocotools do): the pixels are the
  stored ones, whose size is the size COCO jsons record.

Every failure is an ``OSError`` (:class:`ImageTooLarge` included) naming the file, so callers
catch one class; :func:`problem_of` turns it into the skip reason a dataset counts.
"""

from __future__ import annotations

import os
import stat
import warnings
from pathlib import Path

import numpy as np
from PIL import Image

__all__ = ["ImageTooLarge", "MAX_PIXELS", "NotARegularFile", "file_problem", "problem_of", "read_header", "read_rgb",
           "read_rgb_chw", "read_rgb_tensor", "to_rgb"]

MAX_PIXELS: int = int(Image.MAX_IMAGE_PIXELS or 0) or 89_478_485

# Everything PIL raises for a file it cannot read (a truncated, corrupt or foreign file).
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning)


class ImageTooLarge(OSError):
    """The image has more pixels than :data:`MAX_PIXELS`; nothing of it was decoded."""


class NotARegularFile(OSError):
    """The path is a FIFO, socket, device or folder; it was not opened."""


def problem_of(exc: BaseException) -> str:
    """The skip reason of a failed open: ``missing_image``, ``not_a_regular_file``, ``image_too_large``
    or ``unreadable_image``."""
    if isinstance(exc, FileNotFoundError):
        return "missing_image"
    if isinstance(exc, NotARegularFile):
        return "not_a_regular_file"
    if isinstance(exc, ImageTooLarge):
        return "image_too_large"
    return "unreadable_image"


def _check_regular(path: str | Path) -> None:
    """Raise FileNotFoundError / NotARegularFile unless ``path`` (symlinks followed) is a regular file;
    one ``os.stat``, nothing opened."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: image file not found") from None
    except OSError as e:
        raise OSError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    if not stat.S_ISREG(mode):
        raise NotARegularFile(f"{path}: not a regular file (a FIFO, socket, device or folder); never opened")


def file_problem(path: str | Path) -> str | None:
    """None for a regular file, else its skip reason (``missing_image``, ``not_a_regular_file``, ...)."""
    try:
        _check_regular(path)
    except OSError as e:
        return problem_of(e)
    return None


def _open(path: str | Path) -> Image.Image:
    """PIL's lazy open (header only) with the size limit; every failure an OSError naming the file.
    The file is opened non-blocking and checked to be regular on the open descriptor (``fstat``), so a
    path swapped for a FIFO after the ``stat`` cannot block either."""
    _check_regular(path)
    try:
        fp = open(path, "rb", opener=lambda p, flags: os.open(p, flags | os.O_NONBLOCK))
    except FileNotFoundError:
        raise
    except OSError as e:
        raise OSError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    if not stat.S_ISREG(os.fstat(fp.fileno()).st_mode):
        fp.close()
        raise NotARegularFile(f"{path}: not a regular file (a FIFO, socket, device or folder); never read")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(fp)
        im._exclusive_fp = True  # PIL closes the file with the image (as when it opens a path itself)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        fp.close()
        raise ImageTooLarge(f"{path}: {e}") from None
    except _PIL_ERRORS as e:
        fp.close()
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
    return _decoded_rgb(_open(path), path)


def read_rgb_chw(path: str | Path) -> "torch.Tensor":
    """:func:`read_rgb` as a uint8 3xHxW tensor."""
    return _chw(read_rgb(path))


def _chw(rgb: Image.Image) -> "torch.Tensor":
    import torch

    return torch.from_numpy(np.asarray(rgb, dtype=np.uint8).copy()).permute(2, 0, 1)


def _decoded_rgb(im: Image.Image, path: str | Path) -> Image.Image:
    """``im`` (opened by :func:`_open`) decoded as 8-bit RGB; ``im`` and its file closed."""
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

    im = _open(path)  # one open: the regular-file check holds for the bytes decoded
    if not (im.format == "JPEG" and im.mode == "RGB"):
        return _chw(_decoded_rgb(im, path))
    try:
        im.fp.seek(0)
        data = torch.frombuffer(bytearray(im.fp.read()), dtype=torch.uint8)
    except OSError as e:
        raise OSError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from None
    finally:
        im.close()
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
