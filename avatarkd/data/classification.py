"""Image classification from an ImageFolder tree (``root/<class>/<image>``)."""

from __future__ import annotations

import logging
from pathlib import Path

from torch import Tensor
from torch.utils.data import Dataset
from torchvision.datasets import ImageFolder

from ..errors import DataError
from .io import IMAGE_EXTENSIONS, one_line, read_rgb, require_dir

log = logging.getLogger(__name__)


class ImageFolderDataset(Dataset):
    """``(image float32 3xHxW in [0,1], class index)``; classes are the sorted sub-folder names.

    Wraps torchvision's ImageFolder for its folder scan but reads pixels through
    ``avatarkd.data.io`` so a corrupt file is reported by name as a ``DataError``.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = require_dir(Path(root), "image folder")
        try:
            folder = ImageFolder(
                str(self.root), loader=str, is_valid_file=lambda p: p.lower().endswith(IMAGE_EXTENSIONS)
            )
        except (FileNotFoundError, OSError) as exc:
            raise DataError(f"{self.root}: not a usable ImageFolder ({one_line(exc)})") from exc
        self.classes: list[str] = list(folder.classes)
        self.class_to_idx: dict[str, int] = dict(folder.class_to_idx)
        self.num_classes = len(self.classes)
        self.class_names: list[str] = list(self.classes)
        self.class_source = f"the class folders of {self.root}"
        self.samples: list[tuple[str, int]] = list(folder.samples)
        if not self.samples:
            raise DataError(f"{self.root}: no images found in its class folders")
        log.info("%s: %d images in %d classes", self.root, len(self.samples), self.num_classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Tensor, int]:
        path, label = self.samples[index]
        return read_rgb(path), label
