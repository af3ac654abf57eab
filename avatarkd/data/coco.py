"""COCO-format detection data in the target format torchvision detection models train on.

The JSON is validated once at construction so that a bad category id or a missing image
fails before training starts, with the offending file named, instead of mid-epoch.
"""

from __future__ import annotations

import contextlib
import io
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pycocotools.coco import COCO
from torch import Tensor
from torch.utils.data import Dataset

from ..errors import DataError
from .io import SizeMismatchError, read_json, read_rgb, require_dir, require_file
from .io import image_size as read_size

log = logging.getLogger(__name__)

Target = dict[str, Tensor]


def _number_list(value: Any, length: int) -> bool:
    return (
        isinstance(value, (list, tuple))
        and len(value) == length
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)
    )


def _validate(data: Any, ann_file: Path) -> None:
    """Structural checks pycocotools does not do; each failure is one line naming ``ann_file``."""
    if not isinstance(data, dict):
        raise DataError(f"{ann_file}: expected a COCO JSON object with 'images', 'annotations' and 'categories'")
    images, cats = data.get("images"), data.get("categories")
    anns = data.setdefault("annotations", [])
    if not isinstance(images, list) or not images:
        raise DataError(f"{ann_file}: no images listed (the 'images' list is missing or empty)")
    if not isinstance(cats, list) or not cats:
        raise DataError(f"{ann_file}: no categories listed (the 'categories' list is missing or empty)")
    if not isinstance(anns, list):
        raise DataError(f"{ann_file}: 'annotations' must be a list")
    for i, img in enumerate(images):
        if not isinstance(img, dict) or not isinstance(img.get("id"), int) or not isinstance(img.get("file_name"), str):
            raise DataError(f"{ann_file}: images[{i}] needs an integer 'id' and a string 'file_name'")
    for i, cat in enumerate(cats):
        if not isinstance(cat, dict) or not isinstance(cat.get("id"), int):
            raise DataError(f"{ann_file}: categories[{i}] needs an integer 'id'")
    image_ids = [img["id"] for img in images]
    if len(set(image_ids)) != len(image_ids):
        raise DataError(f"{ann_file}: duplicate image ids in 'images'")
    cat_ids = {c["id"] for c in cats}
    if len(cat_ids) != len(cats):
        raise DataError(f"{ann_file}: duplicate category ids in 'categories'")
    known_images = set(image_ids)
    for i, ann in enumerate(anns):
        if not isinstance(ann, dict):
            raise DataError(f"{ann_file}: annotations[{i}] is not an object")
        if ann.get("category_id") not in cat_ids:
            raise DataError(
                f"{ann_file}: annotations[{i}] (id {ann.get('id')}) has category_id "
                f"{ann.get('category_id')!r}, which is not among the categories {sorted(cat_ids)}"
            )
        if ann.get("image_id") not in known_images:
            raise DataError(
                f"{ann_file}: annotations[{i}] (id {ann.get('id')}) refers to image_id "
                f"{ann.get('image_id')!r}, which is not in 'images'"
            )
        if not _number_list(ann.get("bbox"), 4):
            raise DataError(f"{ann_file}: annotations[{i}] (id {ann.get('id')}) needs 'bbox' as [x, y, width, height]")


def _normalise(data: dict[str, Any]) -> None:
    """Fill the optional fields COCOeval reads (``id``, ``area``, ``iscrowd``) so evaluation cannot KeyError."""
    for i, ann in enumerate(data["annotations"]):
        ann.setdefault("id", i + 1)
        ann.setdefault("iscrowd", 0)
        ann.setdefault("area", float(ann["bbox"][2] * ann["bbox"][3]))


def build_coco(data: dict[str, Any]) -> COCO:
    """A pycocotools index over already-parsed JSON, without its progress prints on stdout."""
    coco = COCO()
    coco.dataset = data
    with contextlib.redirect_stdout(io.StringIO()):
        coco.createIndex()
    return coco


class CocoDetection(Dataset):
    """Images + COCO JSON → ``(image, target)`` with contiguous labels ``1..num_classes`` (0 is background).

    COCO category ids are often sparse (1..90 with gaps); detectors want a dense label range, so
    ``label_to_cat_id`` maps back for evaluation. Crowd regions are left out of the training
    targets (``skip_crowd``) because detector losses treat every box as a positive instance;
    evaluation still sees them through ``coco``.
    """

    def __init__(self, image_dir: str | Path, ann_file: str | Path, skip_crowd: bool = True) -> None:
        self.image_dir = require_dir(Path(image_dir), "image directory")
        self.ann_file = require_file(Path(ann_file), "annotation file")
        data = read_json(self.ann_file, "annotation file")
        _validate(data, self.ann_file)
        _normalise(data)
        self.coco = build_coco(data)

        cats = sorted(data["categories"], key=lambda c: c["id"])
        self.label_to_cat_id: dict[int, int] = {k + 1: c["id"] for k, c in enumerate(cats)}
        self.cat_id_to_label: dict[int, int] = {c: k for k, c in self.label_to_cat_id.items()}
        self.cat_names: list[str] = [str(c.get("name", c["id"])) for c in cats]
        self.class_names: list[str] = list(self.cat_names)  # label k is class_names[k - 1]
        self.class_source = f"the categories of {self.ann_file}"
        self.num_classes = len(cats)

        self.ids: list[int] = sorted(self.coco.imgs)
        self._check_files_exist()
        self._targets = [self._target_arrays(i, skip_crowd) for i in self.ids]
        dropped = sum(t[3] for t in self._targets)
        if dropped:
            log.warning(
                "%s: dropped %d degenerate boxes (width or height <= 1 px) from the training targets",
                self.ann_file,
                dropped,
            )
        log.info(
            "%s: %d images, %d annotations, %d classes",
            self.ann_file,
            len(self.ids),
            len(self.coco.anns),
            self.num_classes,
        )

    def _path(self, image_id: int) -> Path:
        return self.image_dir / self.coco.imgs[image_id]["file_name"]

    def _check_files_exist(self) -> None:
        missing = [p for p in (self._path(i) for i in self.ids) if not p.is_file()]
        if missing:
            raise DataError(
                f"{missing[0]}: image listed in {self.ann_file} not found "
                f"({len(missing)} of {len(self.ids)} images missing)"
            )

    def _target_arrays(self, image_id: int, skip_crowd: bool) -> tuple[np.ndarray, np.ndarray, np.ndarray, int]:
        """(boxes xyxy, labels, [area, iscrowd] rows, number of degenerate boxes dropped) for one image."""
        boxes, labels, extra, dropped = [], [], [], 0
        for ann in self.coco.imgToAnns.get(image_id, []):
            if skip_crowd and ann.get("iscrowd", 0):
                continue
            x, y, w, h = (float(v) for v in ann["bbox"])
            if w <= 1 or h <= 1:
                dropped += 1
                continue
            boxes.append((x, y, x + w, y + h))
            labels.append(self.cat_id_to_label[ann["category_id"]])
            extra.append((float(ann["area"]), float(ann.get("iscrowd", 0))))
        return (
            np.asarray(boxes, np.float32).reshape(-1, 4),
            np.asarray(labels, np.int64),
            np.asarray(extra, np.float64).reshape(-1, 2),
            dropped,
        )

    def __len__(self) -> int:
        return len(self.ids)

    def __getitem__(self, index: int) -> tuple[Tensor, Target]:
        image_id = self.ids[index]
        path = self._path(image_id)
        image = read_rgb(path)
        info = self.coco.imgs[image_id]
        height, width = image.shape[-2:]
        if "width" in info and "height" in info and (info["width"], info["height"]) != (width, height):
            raise SizeMismatchError(
                f"{path}: image is {width}x{height} but {self.ann_file} says {info['width']}x{info['height']}"
            )
        boxes, labels, extra, _ = self._targets[index]
        target: Target = {
            "boxes": torch.from_numpy(boxes.copy()),
            "labels": torch.from_numpy(labels.copy()),
            "image_id": torch.tensor(image_id, dtype=torch.int64),
            "area": torch.from_numpy(extra[:, 0].astype(np.float32)),
            "iscrowd": torch.from_numpy(extra[:, 1].astype(np.int64)),
        }
        return image, target

    def image_size(self, index: int) -> tuple[int, int]:
        """(width, height) without decoding pixels (for aspect-ratio grouping)."""
        return read_size(self._path(self.ids[index]))


def collate_detection(batch: Sequence[tuple[Tensor, Target]]) -> tuple[list[Tensor], list[Target]]:
    """Lists rather than stacked tensors: detection images differ in size and targets in length."""
    images = [item[0] for item in batch]
    targets = [item[1] for item in batch]
    return images, targets
