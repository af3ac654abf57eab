"""Semantic segmentation from two folders: images and same-named single-channel PNG label masks.

This is the layout of VOC/ADE/Cityscapes-style exports after conversion, and the simplest one
a user can produce; pairing is by file stem so image and mask extensions may differ.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .io import IMAGE_EXTENSIONS, read_mask, read_rgb, require_dir
from .transforms import coin, hflip_image

log = logging.getLogger(__name__)


class SegmentationFolder(Dataset):
    """``(image float32 3xHxW in [0,1], mask int64 HxW)`` pairs, masks holding class ids or ``ignore_index``.

    Pairing and missing masks are checked at construction; pixel content (size agreement, class
    range) is checked on load, because reading every mask up front would be slow on large sets.
    """

    def __init__(self, image_dir: str | Path, mask_dir: str | Path, ignore_index: int = 255,
                 num_classes: int | None = None, class_names: Sequence[str] | None = None,
                 hflip: float = 0.0) -> None:
        self.image_dir = require_dir(Path(image_dir), "image directory")
        self.mask_dir = require_dir(Path(mask_dir), "mask directory")
        self.ignore_index = int(ignore_index)
        self.num_classes = num_classes
        self.class_names = list(class_names) if class_names is not None else None
        if self.class_names is not None and num_classes is not None and len(self.class_names) != num_classes:
            raise DataError(f"{self.mask_dir}: {len(self.class_names)} class names given for {num_classes} classes")
        self.hflip = float(hflip)
        self.pairs = self._pair()
        log.info("%s: %d image/mask pairs", self.image_dir, len(self.pairs))

    def _pair(self) -> list[tuple[Path, Path]]:
        images = sorted(p for p in self.image_dir.iterdir()
                        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS)
        if not images:
            raise DataError(f"{self.image_dir}: no images found (looked for {', '.join(IMAGE_EXTENSIONS)})")
        seen: dict[str, Path] = {}
        pairs = []
        for image in images:
            if image.stem in seen:
                raise DataError(f"{image}: two images share the stem '{image.stem}' "
                                f"(also {seen[image.stem].name}), so the mask pairing is ambiguous")
            seen[image.stem] = image
            mask = self.mask_dir / f"{image.stem}.png"
            if not mask.is_file():
                raise DataError(f"{image}: no mask for this image (expected {mask})")
            pairs.append((image, mask))
        return pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def __getitem__(self, index: int) -> tuple[Tensor, Tensor]:
        image_path, mask_path = self.pairs[index]
        image, mask = read_rgb(image_path), read_mask(mask_path)
        if tuple(image.shape[-2:]) != tuple(mask.shape):
            raise DataError(f"{mask_path}: mask is {mask.shape[1]}x{mask.shape[0]} but its image "
                            f"{image_path.name} is {image.shape[2]}x{image.shape[1]}")
        if self.num_classes is not None:
            bad = ((mask >= self.num_classes) & (mask != self.ignore_index)) | (mask < 0)
            if bool(bad.any()):
                raise DataError(f"{mask_path}: mask value {int(mask[bad][0])} is neither a class id "
                                f"in 0..{self.num_classes - 1} nor ignore_index {self.ignore_index}")
        if coin(self.hflip):
            image, mask = hflip_image(image), mask.flip(-1)
        return image, mask
