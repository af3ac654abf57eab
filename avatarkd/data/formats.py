"""Dataset formats: where each published layout keeps a split's images and labels.

``FORMATS`` is the one table of formats (its keys are ``config.DATA_FORMATS``, checked by the tests):
each entry says which tasks it serves, what its layout looks like (for error messages) and how to
read a split. A reader returns the plain dataset of a split, its items untransformed; the entry
point ``data.open_dataset`` adds augmentation and the skipping of unreadable files.

A missing folder or file is reported by its expected path, with the layout the format expects and,
when the folder looks like another format, which one.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from ..config import DataConfig
from ..errors import ConfigError, DataError
from .classes import check_count, rename, resolve_segmentation_classes
from .classification import ImageFolderDataset
from .coco import CocoDetection
from .io import one_line
from .labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES, ade20k_lut, cityscapes_lut, voc_lut
from .segmentation import Pair, SegmentationPairs, pair_by_stem

Reader = Callable[[str, "Layout", str, DataConfig], Dataset]


@dataclass(frozen=True)
class Layout:
    """Where a format's files are: ``root`` (may be None for explicit paths) and the format's name."""

    format: str
    root: Path | None

    def need(self, path: Path, kind: str = "folder") -> Path:
        """``path`` itself, or a one-line DataError naming it and the layout the format expects."""
        exists = path.is_dir() if kind == "folder" else path.is_file()
        if exists:
            return path
        fmt = FORMATS[self.format]
        if self.root is not None and not self.root.is_dir():
            raise DataError(
                f"data.root {self.root} does not exist; the {self.format} format expects there {fmt.layout}"
            )
        where = f"data.root {self.root}: " if self.root is not None else ""
        shown = path.relative_to(self.root) if self.root is not None and path.is_relative_to(self.root) else path
        hint = ""
        guess = guess_format(self.root) if self.root is not None else None
        if guess is not None and guess != self.format:
            hint = f"; this folder looks like the {guess} format (data.format: {guess})"
        raise DataError(f"{where}{kind} {shown} is missing; the {self.format} format expects {fmt.layout}{hint}")

    def under(self, *parts: str) -> Path:
        if self.root is None:
            raise ConfigError(
                f"data.root: the {self.format} format needs data.root, the folder holding {FORMATS[self.format].layout}"
            )
        return self.root.joinpath(*parts)


def _explicit(data: DataConfig, split: str, kind: str) -> Path | None:
    """``data.{split}_{kind}`` (train/val only)."""
    return getattr(data, f"{split}_{kind}", None) if split in ("train", "val") else None


def _path(data: DataConfig, at: Layout, split: str, kind: str, *layout: str, is_file: bool = False) -> Path:
    """``data.{split}_{kind}`` if given, else ``root/<layout>``, which must exist."""
    explicit = _explicit(data, split, kind)
    if explicit is not None:
        return explicit
    if at.root is None:
        raise ConfigError(f"data.{split}_{kind}: not set, and there is no data.root to find it under")
    return at.need(at.under(*layout), "file" if is_file else "folder")


# ----------------------------------------------------------------------------- readers: folders and segmentation
def _folders(task: str, at: Layout, split: str, data: DataConfig) -> Dataset:
    if task == "classification":
        return _images_by_class(at, data, _path(data, at, split, "images", "classify", split))
    if task == "detection":
        return _coco(
            _path(data, at, split, "images", split, "images"),
            _path(data, at, split, "annotations", split, "annotations.json", is_file=True),
            data,
        )
    images = _path(data, at, split, "images", split, "images")
    masks = _path(data, at, split, "masks", split, "masks")
    annotations = _explicit(data, split, "annotations") or (
        at.root / split / "annotations.json" if at.root is not None else None
    )
    ds = SegmentationPairs(pair_by_stem(images, masks), None, data.ignore_index, name=str(masks))
    resolve_segmentation_classes(ds, data, "folders", None, annotations)
    return ds


def _cityscapes(task: str, at: Layout, split: str, data: DataConfig) -> Dataset:
    image_root = at.need(at.under("leftImg8bit", split))
    label_root = at.need(at.under("gtFine", split))
    suffix = "_leftImg8bit.png"
    images = sorted(image_root.glob(f"*/*{suffix}"))
    if not images:
        raise DataError(f"{image_root}: split '{split}' is empty (no <city>/*{suffix} images)")
    pairs: list[Pair] = []
    missing: list[Pair] = []
    for image in images:
        mask = label_root / image.parent.name / f"{image.name[: -len(suffix)]}_gtFine_labelIds.png"
        (pairs if mask.is_file() else missing).append((image, mask))
    if missing:
        raise DataError(
            f"{missing[0][1]}: label file missing for {missing[0][0].name} "
            f"({len(missing)} of {len(images)} images of split '{split}' have none)"
        )
    ds = SegmentationPairs(
        pairs, None, data.ignore_index, lut=cityscapes_lut(data.ignore_index), name=f"cityscapes {split}"
    )
    resolve_segmentation_classes(ds, data, "cityscapes", CITYSCAPES_CLASSES, None)
    return ds


def _voc_base(at: Layout) -> Path:
    """The VOC2012 folder: ``root`` itself, or ``root/VOC2012``, ``root/VOCdevkit/VOC2012``."""
    root = at.under()
    for candidate in (root, root / "VOC2012", root / "VOCdevkit" / "VOC2012"):
        if (candidate / "JPEGImages").is_dir():
            return candidate
    return root


def _voc(task: str, at: Layout, split: str, data: DataConfig) -> Dataset:
    base = _voc_base(at)
    at = Layout(at.format, base)
    list_file = at.need(base / "ImageSets" / "Segmentation" / f"{split}.txt", "file")
    image_dir, mask_dir = at.need(base / "JPEGImages"), at.need(base / "SegmentationClass")
    try:
        lines = list_file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{list_file}: cannot read the split list ({one_line(exc)})") from exc
    listed = [(n + 1, line.strip()) for n, line in enumerate(lines) if line.strip()]
    if not listed:
        raise DataError(f"{list_file}: split '{split}' is empty (the list names no images)")
    pairs, missing = [], []
    for lineno, name in listed:
        image, mask = image_dir / f"{name}.jpg", mask_dir / f"{name}.png"
        absent = [p for p in (image, mask) if not p.is_file()]
        if absent:
            missing.append((lineno, name, absent[0]))
        pairs.append((image, mask))
    if missing:
        lineno, name, path = missing[0]
        raise DataError(
            f"{list_file} line {lineno}: '{name}' is listed but {path} does not exist "
            f"({len(missing)} of {len(listed)} listed images incomplete)"
        )
    ds = SegmentationPairs(pairs, None, data.ignore_index, lut=voc_lut(data.ignore_index), name=f"voc {split}")
    resolve_segmentation_classes(ds, data, "voc", VOC_CLASSES, None)
    return ds


def _ade20k(task: str, at: Layout, split: str, data: DataConfig) -> Dataset:
    root = at.under()
    if not (root / "images").is_dir() and (root / "ADEChallengeData2016" / "images").is_dir():
        at = Layout(at.format, root / "ADEChallengeData2016")
    folder = {"train": "training", "val": "validation"}.get(split)
    if folder is None:
        raise ConfigError(
            f"eval.split: the ade20k format has no annotated '{split}' split (SceneParsing's "
            "test images come without labels); use val"
        )
    images, masks = at.need(at.under("images", folder)), at.need(at.under("annotations", folder))
    ds = SegmentationPairs(
        pair_by_stem(images, masks), None, data.ignore_index, lut=ade20k_lut(data.ignore_index), name=f"ade20k {split}"
    )
    resolve_segmentation_classes(ds, data, "ade20k", ADE20K_CLASSES, None)
    return ds


# ----------------------------------------------------------------------------- detection, classification
def _coco(images: Path, ann: Path, data: DataConfig) -> CocoDetection:
    ds = CocoDetection(images, ann)
    check_count(ds.num_classes, data, ds.class_source)
    ds.class_names, ds.class_source = rename(ds.class_names, data.class_names, ds.class_source)
    return ds


def _coco_format(task: str, at: Layout, split: str, data: DataConfig) -> Dataset:
    return _coco(
        _path(data, at, split, "images", f"{split}2017"),
        _path(data, at, split, "annotations", "annotations", f"instances_{split}2017.json", is_file=True),
        data,
    )


def _images_by_class(at: Layout, data: DataConfig, folder: Path) -> Dataset:
    ds = ImageFolderDataset(folder)
    check_count(ds.num_classes, data, ds.class_source)
    ds.class_names, ds.class_source = rename(ds.class_names, data.class_names, ds.class_source)
    return ds


def _imagefolder(task: str, at: Layout, split: str, data: DataConfig) -> Dataset:
    return _images_by_class(at, data, _path(data, at, split, "images", split))


# ----------------------------------------------------------------------------- the table
@dataclass(frozen=True)
class Format:
    tasks: tuple[str, ...]
    layout: str  # what a user should find under data.root, for error messages
    marker: tuple[str, ...]  # paths under a root that identify the format (for "looks like" hints)
    read: Reader
    explicit: tuple[str, ...] = ()  # data.{split}_<kind> paths this format reads


ALL_TASKS = ("segmentation", "detection", "classification")
FORMATS: dict[str, Format] = {
    "folders": Format(
        ALL_TASKS,
        "{split}/images + {split}/masks (segmentation), {split}/images + "
        "{split}/annotations.json (detection), classify/{split}/<class>/ (classification)",
        ("train/images", "val/images", "classify"),
        _folders,
        ("images", "masks", "annotations"),
    ),
    "cityscapes": Format(
        ("segmentation",),
        "leftImg8bit/{split}/<city>/*_leftImg8bit.png with gtFine/{split}/<city>/*_gtFine_labelIds.png",
        ("leftImg8bit", "gtFine"),
        _cityscapes,
    ),
    "voc": Format(
        ("segmentation",),
        "JPEGImages/*.jpg, SegmentationClass/*.png and "
        "ImageSets/Segmentation/{split}.txt of VOC2012/ (or of VOCdevkit/VOC2012/ under data.root)",
        ("JPEGImages", "VOC2012", "VOCdevkit"),
        _voc,
    ),
    "ade20k": Format(
        ("segmentation",),
        "images/{training,validation}/*.jpg with annotations/{training,validation}/*.png of ADEChallengeData2016/",
        ("ADEChallengeData2016", "images/training"),
        _ade20k,
    ),
    "coco": Format(
        ("detection",),
        "annotations/instances_{split}2017.json with {split}2017/*.jpg",
        ("annotations/instances_train2017.json", "annotations/instances_val2017.json", "train2017", "val2017"),
        _coco_format,
        ("images", "annotations"),
    ),
    "imagefolder": Format(("classification",), "{split}/<class>/*.jpg", (), _imagefolder, ("images",)),
}


def guess_format(root: Path) -> str | None:
    """The format whose marker paths exist under ``root`` (None if none does)."""
    for name, fmt in FORMATS.items():
        if any((root / marker).exists() for marker in fmt.marker):
            return name
    return None
