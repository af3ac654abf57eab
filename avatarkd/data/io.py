"""Reading images and label masks, turning every decoder failure into a one-line ``DataError``.

PIL's exceptions name neither the file nor the dataset; a user with 100k images needs both,
so every read in ``avatarkd.data`` goes through these two functions.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from ..errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
MASK_MODES = ("L", "P", "I", "I;16", "I;16L", "I;16B", "I;16N")


def one_line(exc: BaseException) -> str:
    """The exception text squeezed onto one line (the CLI prints errors as a single line)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def require_dir(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{what} not found: {path} is not a directory")
    return path


def require_file(path: Path, what: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{what} not found: {path}")
    return path


def read_json(path: Path, what: str) -> Any:
    path = require_file(path, what)
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}: invalid JSON ({exc.msg} at line {exc.lineno} column {exc.colno})") from exc
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read {what} ({one_line(exc)})") from exc


class UnreadableError(DataError):
    """An item that cannot be used as stored: an image or mask file missing or undecodable, or a
    mask (or annotation) whose size disagrees with its image. ``data.skip_unreadable`` skips these."""


class SizeMismatchError(UnreadableError):
    """A mask or annotation that disagrees with its image's size: the pair cannot be used as is.

    An ``UnreadableError`` because the item is as unusable as an undecodable file (no crop or resize
    could tell which of the two is right), so ``data.skip_unreadable`` skips and counts it alike.
    """


def _open(path: Path | str) -> Image.Image:
    """A fully decoded PIL image; truncated or corrupt files fail here rather than deep in a model.

    ``load()`` closes the file that ``Image.open`` opened once the pixels are read, so the image
    is returned as it is (no copy, no separate existence check: one ``open`` per read).
    """
    im = None
    try:
        im = Image.open(path)
        im.load()
        return im
    except FileNotFoundError as exc:
        raise UnreadableError(f"{path}: image file not found") from exc
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as exc:
        if im is not None:
            im.close()
        raise UnreadableError(f"{path}: cannot read image ({one_line(exc)})") from exc


HIGH_DEPTH_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I", "F")


def _rgb_array(im: Image.Image) -> np.ndarray:
    """float32 HxWx3 in [0, 1] from any PIL mode.

    PIL's ``convert("RGB")`` clips 16-bit and 32-bit greyscale to 255 (a 16-bit image becomes
    almost all white), so those modes are scaled here instead: integer modes by 1/65535 (16-bit
    PNG/TIFF, which PIL may also open as ``I``), float images are taken as already in [0, 1].
    Every other mode (grey, palette, RGBA/LA with alpha dropped, CMYK, YCbCr, 1-bit) goes through
    PIL's own conversion, which maps each to 8-bit RGB correctly.
    """
    if im.mode in HIGH_DEPTH_MODES:
        grey = np.asarray(im, dtype=np.float32)
        if im.mode != "F":
            grey = grey / 65535.0
        grey = np.clip(grey, 0.0, 1.0)
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0


def read_rgb(path: Path | str) -> Tensor:
    """A float32 3xHxW tensor in [0, 1], the input format of torchvision models."""
    im = _open(path)
    if im.mode == "RGB":  # the common case: bytes to CHW float in one pass, as torchvision's ToTensor
        pixels = torch.from_numpy(np.array(im)).permute(2, 0, 1)
        return pixels.to(torch.float32, memory_format=torch.contiguous_format).div_(255.0)
    try:
        array = _rgb_array(im)
    except (OSError, ValueError) as exc:
        raise UnreadableError(f"{path}: cannot convert image to RGB ({one_line(exc)})") from exc
    return torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)


def read_mask(path: Path) -> Tensor:
    """An int64 HxW tensor of class indices.

    Palette ("P") masks are read as palette indices, which is how VOC-style datasets store
    class ids; an RGB mask is refused because its colours cannot be mapped to classes safely.
    """
    path = Path(path)
    im = _open(path)
    if im.mode not in MASK_MODES:
        raise DataError(f"{path}: a label mask must be single-channel (PIL mode L, P or I), got mode {im.mode}")
    return torch.from_numpy(np.asarray(im).astype(np.int64))


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the header only, for cheap consistency checks."""
    if not Path(path).is_file():
        raise UnreadableError(f"{path}: image file not found")
    try:
        with Image.open(path) as im:
            return im.size
    except (OSError, ValueError, SyntaxError) as exc:
        raise UnreadableError(f"{path}: cannot read image ({one_line(exc)})") from exc
