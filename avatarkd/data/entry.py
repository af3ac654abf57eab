"""``open_dataset``: the one way to get a split of any supported format as ``(image, target)`` items.

Training splits come augmented (``Augmented``, seeded per sample); evaluation splits are untouched:
for segmentation an int64 HxW mask of train ids at the image's original size (ignore 255), for
detection the COCO boxes in pixels of the stored image, for classification the class index.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from torch.utils.data import Dataset

from ..config import DataConfig
from ..errors import ConfigError, DataError
from ..naming import did_you_mean
from .formats import FORMATS, Layout
from .transforms import CenterCrop, ClassificationAugment, DetectionAugment, SegmentationAugment
from .wrappers import Augmented, Mapped, SkipUnreadable

SPLITS = ("train", "val", "test")
EXPLICIT_KEYS = ("images", "masks", "annotations")


def demo_data_root() -> Path:
    """The bundled ``fashion_canvas`` folder, found next to the installed package (wheel or checkout)."""
    root = Path(__file__).resolve().parent.parent / "demo_data" / "fashion_canvas"
    if not root.is_dir():
        raise DataError(
            f"bundled demo data not found at {root}; regenerate it with "
            "`python scripts/make_demo_data.py` or reinstall avatarkd"
        )
    return root


def _explicit_keys(data: DataConfig) -> list[str]:
    return [f"{s}_{k}" for s in ("train", "val") for k in EXPLICIT_KEYS if getattr(data, f"{s}_{k}") is not None]


def data_root(data: DataConfig) -> Path | None:
    """``data.root``; without it and without explicit paths, the bundled data (``folders`` format only)."""
    if data.root is not None:
        return Path(data.root)
    if data.format == "folders" and not _explicit_keys(data):
        return demo_data_root()
    return None


def train_transform(task: str, data: DataConfig) -> Any:
    """The augmentation of a task's training split, configured from ``data:``."""
    if task == "segmentation":
        return SegmentationAugment(
            data.crop_size, data.scale_range, data.base_size, data.hflip, data.photometric, data.ignore_index
        )
    if task == "detection":
        return DetectionAugment(data.hflip)
    return ClassificationAugment(data.crop_size, data.hflip)


def open_dataset(
    task: str,
    format: str | None = None,
    root: str | Path | None = None,
    split: str = "train",
    *,
    config: DataConfig | None = None,
    seed: int = 0,
) -> Dataset:
    """One split of a dataset; ``config`` gives the options (augmentation, ignore index, class names, ...).

    ``format`` and ``root``, when given, override ``config.format`` and ``config.root`` (default
    ``folders`` and the bundled data). ``seed`` seeds the training augmentation. The returned dataset
    has ``class_names``, ``num_classes`` and (on the reader, see ``wrappers.innermost``)
    ``class_source``, which says where the classes came from.
    """
    data = config or DataConfig()
    format = format or data.format
    if format not in FORMATS:
        raise ConfigError(
            f"data.format: unknown format {format!r}{did_you_mean(format, FORMATS)}; choose one of {', '.join(FORMATS)}"
        )
    if split not in SPLITS:
        raise ConfigError(f"unknown split {split!r}{did_you_mean(split, SPLITS)}; choose one of {', '.join(SPLITS)}")
    data = data.model_copy(update={"format": format, "root": Path(root) if root is not None else data.root})
    fmt = FORMATS[format]
    if task not in fmt.tasks:
        fits = [name for name, f in FORMATS.items() if task in f.tasks]
        raise ConfigError(
            f"data.format: {format!r} holds {' or '.join(fmt.tasks)} data, not {task}; "
            f"for {task} choose {' or '.join(fits)}"
        )
    unread = [k for k in _explicit_keys(data) if k.split("_", 1)[1] not in fmt.explicit]
    if unread:
        raise ConfigError(
            f"data.{unread[0]}: the {format} format finds its files under data.root and does not "
            "read explicit paths; remove it"
        )
    dataset: Dataset = fmt.read(task, Layout(format, data_root(data)), split, data)
    if data.skip_unreadable:
        dataset = SkipUnreadable(dataset, replace=split == "train")
    if split == "train":
        return Augmented(dataset, train_transform(task, data), seed)
    if task == "classification" and data.crop_size is not None:
        return Mapped(dataset, CenterCrop(data.crop_size))
    return dataset
