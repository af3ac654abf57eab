"""Semantic segmentation: (image, label mask) pairs, with the stored mask values mapped to train ids.

Every segmentation format is a list of pairs plus a lookup table from what the files store to the
ids the model trains on (``data.labels``); ``pair_by_stem`` pairs two plain folders by file stem
(the ``folders`` format, and the simplest layout a user can produce).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .io import IMAGE_EXTENSIONS, SizeMismatchError, read_mask, read_rgb, require_dir
from .labels import generic_names

Pair = tuple[Path, Path]


class SegmentationPairs(Dataset):
    """``(image float32 3xHxW in [0,1], mask int64 HxW)``; mask values are train ids or ``ignore_index``.

    ``lut`` maps stored values to train ids (-1 marks a value the format does not allow); without
    one, stored values must already be ids in ``0..num_classes-1`` or ``ignore_index``. Values are
    checked on load, because reading every mask up front would be slow on large sets; the
    pre-flight check (``avatarkd check-data``) reads a sample of them before training.
    """

    def __init__(
        self,
        pairs: Sequence[Pair],
        num_classes: int | None,
        ignore_index: int = 255,
        class_names: Sequence[str] | None = None,
        lut: np.ndarray | None = None,
        name: str = "segmentation data",
    ) -> None:
        self.pairs = list(pairs)
        self.ignore_index = int(ignore_index)
        self.num_classes = num_classes
        if class_names is not None and num_classes is not None and len(class_names) != num_classes:
            raise DataError(f"{name}: {len(class_names)} class names given for {num_classes} classes")
        self.class_names = (
            list(class_names)
            if class_names is not None
            else (generic_names(num_classes) if num_classes is not None else None)
        )
        self.lut = torch.from_numpy(lut) if lut is not None else None
        self.name = name
        self.class_source = ""  # set by data.classes.resolve_segmentation_classes

    def __len__(self) -> int:
        return len(self.pairs)

    def read_raw(self, index: int) -> tuple[Tensor, Tensor]:
        """The image and the mask as stored (no mapping, no range check)."""
        image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), read_mask(mask_path)
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise SizeMismatchError(
                f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                f"{image_path.name} is {image.shape[2]}x{image.shape[1]}"
            )
        return image, mask

    def map_mask(self, mask: Tensor, mask_path: Path) -> Tensor:
        """Stored values -> train ids; a value that is neither a class nor ignore is a one-line DataError."""
        if self.lut is not None:
            mapped = self.lut[mask.clamp(0, len(self.lut) - 1)]
            wrong = (mask < 0) | (mask >= len(self.lut)) | (mapped < 0)
            if bool(wrong.any()):
                raise DataError(
                    f"{mask_path}: mask value {int(mask[wrong][0])} is not a label of {self.name} "
                    f"(expected {self._allowed()})"
                )
            return mapped
        if self.num_classes is not None:
            wrong = ((mask >= self.num_classes) & (mask != self.ignore_index)) | (mask < 0)
            if bool(wrong.any()):
                raise DataError(
                    f"{mask_path}: mask value {int(mask[wrong][0])} is neither a class id "
                    f"in 0..{self.num_classes - 1} nor ignore_index {self.ignore_index}"
                )
        return mask

    def _allowed(self) -> str:
        assert self.lut is not None
        valid = (self.lut >= 0).nonzero().flatten().tolist()
        runs, start = [], valid[0]
        for a, b in zip(valid, valid[1:] + [None], strict=True):
            if b != a + 1:
                runs.append(f"{start}" if start == a else f"{start}..{a}")
                start = b
        return ", ".join(runs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image, mask = self.read_raw(index)
        return image, self.map_mask(mask, self.pairs[index][1])


def pair_by_stem(image_dir: Path, mask_dir: Path) -> list[Pair]:
    """Images in ``image_dir`` with the same-stem ``.png`` in ``mask_dir``; a missing mask is an error."""
    image_dir = require_dir(Path(image_dir), "image directory")
    mask_dir = require_dir(Path(mask_dir), "mask directory")
    images = sorted(p for p in image_dir.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
    if not images:
        raise DataError(f"{image_dir}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
    seen: dict[str, Path] = {}
    pairs = []
    for image in images:
        if image.stem in seen:
            raise DataError(
                f"{image}: two images share the stem '{image.stem}' "
                f"(also {seen[image.stem].name}), so the mask pairing is ambiguous"
            )
        seen[image.stem] = image
        mask = mask_dir / f"{image.stem}.png"
        if not mask.is_file():
            raise DataError(f"{image}: no mask for this image (expected {mask})")
        pairs.append((image, mask))
    return pairs


def scan_class_count(dataset: SegmentationPairs) -> int:
    """Classes implied by the masks: the largest stored id other than ``ignore_index``, plus one.

    Reads every mask (the price of not being told ``data.num_classes``).
    """
    largest = -1
    for _, mask_path in dataset.pairs:
        mask = read_mask(mask_path)
        values = mask[mask != dataset.ignore_index]
        if values.numel():
            if int(values.min()) < 0:
                raise DataError(f"{mask_path}: negative mask value {int(values.min())}")
            largest = max(largest, int(values.max()))
    if largest < 0:
        raise DataError(
            f"{dataset.name}: every mask holds only ignore_index {dataset.ignore_index}; set data.num_classes"
        )
    return largest + 1
