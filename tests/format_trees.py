"""Tiny trees in the published dataset layouts (Cityscapes, VOC, ADE20K, COCO, ImageFolder), written by tests.

Images are drawn so that a model can learn something in a few steps: each labelled region has a
colour of its own. Sizes vary between images on purpose (real datasets do), except where a
format's real data does not (Cityscapes: one size per tree).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

# stored label values used by the trees, and the colour each is painted in
CITYSCAPES_IDS = (7, 24, 26, 33, 0, 4)  # road, person, car, bicycle (-> 0, 11, 13, 18), two ignored ids
VOC_VALUES = (0, 15, 255)  # background, person, boundary (kept as ignore)
ADE_VALUES = (0, 1, 150, 13)  # other (ignored), wall, flag, person


def colour(value: int) -> tuple[int, int, int]:
    """A distinct colour per stored value (deterministic, never black)."""
    rng = np.random.default_rng(value + 1)
    return tuple(int(v) for v in rng.integers(40, 256, 3))  # type: ignore[return-value]


def _paint(height: int, width: int, values: tuple[int, ...], rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """A label map of vertical bands (one per value, random widths) and its colour image."""
    cuts = np.sort(rng.choice(np.arange(1, width), size=len(values) - 1, replace=False))
    labels = np.zeros((height, width), np.int64)
    for value, (a, b) in zip(values, zip([0, *cuts], [*cuts, width], strict=True), strict=True):
        labels[:, a:b] = value
    image = np.zeros((height, width, 3), np.uint8)
    for value in values:
        image[labels == value] = colour(value)
    return labels, image


def _save(path: Path, array: np.ndarray) -> None:
    """A PNG of ``array`` as 8-bit (grey for label maps, RGB for images)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array.astype(np.uint8)).save(path)


def write_cityscapes(
    root: Path, n_train: int = 4, n_val: int = 2, size: tuple[int, int] = (32, 64), seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val), ("test", 1)):
        for i in range(n):
            city = ("aachen", "bremen")[i % 2]
            stem = f"{city}_{i:06d}_000019"
            labels, image = _paint(*size, CITYSCAPES_IDS, rng)
            _save(root / "leftImg8bit" / split / city / f"{stem}_leftImg8bit.png", image)
            _save(root / "gtFine" / split / city / f"{stem}_gtFine_labelIds.png", labels)
    return root


VOC_PALETTE = [0, 0, 0] * 256
VOC_PALETTE[15 * 3 : 15 * 3 + 3] = [192, 128, 128]
VOC_PALETTE[255 * 3 : 255 * 3 + 3] = [224, 224, 192]


def write_voc(
    root: Path, sizes: tuple[tuple[int, int], ...] = ((30, 40), (36, 28), (32, 32), (40, 44)), seed: int = 0
) -> Path:
    """``root/VOCdevkit/VOC2012`` with palette masks; ids 0-1 train, 2-3 val."""
    rng = np.random.default_rng(seed)
    base = root / "VOCdevkit" / "VOC2012"
    names = [f"2007_{i:06d}" for i in range(len(sizes))]
    for name, size in zip(names, sizes, strict=True):
        labels, image = _paint(*size, VOC_VALUES, rng)
        path = base / "JPEGImages" / f"{name}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=95)
        mask = Image.fromarray(labels.astype(np.uint8), "L").convert("P")
        mask.putpalette(VOC_PALETTE)
        (base / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        mask.save(base / "SegmentationClass" / f"{name}.png")
    lists = base / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True, exist_ok=True)
    half = len(names) // 2
    (lists / "train.txt").write_text("\n".join(names[:half]) + "\n")
    (lists / "val.txt").write_text("\n".join(names[half:]) + "\n")
    return root


def write_ade20k(
    root: Path, sizes: tuple[tuple[int, int], ...] = ((32, 48), (40, 30), (28, 36), (36, 36)), seed: int = 0
) -> Path:
    """``root/ADEChallengeData2016``; the first half of ``sizes`` is training, the rest validation."""
    rng = np.random.default_rng(seed)
    base = root / "ADEChallengeData2016"
    half = len(sizes) // 2
    for i, size in enumerate(sizes):
        split, kind = ("training", "train") if i < half else ("validation", "val")
        labels, image = _paint(*size, ADE_VALUES, rng)
        stem = f"ADE_{kind}_{i:08d}"
        path = base / "images" / split / f"{stem}.jpg"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(image).save(path, quality=95)
        _save(base / "annotations" / split / f"{stem}.png", labels)
    return root


COCO_CATEGORIES = [{"id": 1, "name": "person"}, {"id": 3, "name": "car"}, {"id": 18, "name": "dog"}]


def write_coco(root: Path, n_train: int = 6, n_val: int = 3, seed: int = 0) -> Path:
    """``annotations/instances_{split}2017.json`` + ``{split}2017/``: sparse category ids, a crowd box, odd sizes."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        images, anns = [], []
        for i in range(n):
            height, width = int(rng.integers(40, 64)), int(rng.integers(40, 72))
            image = (rng.random((height, width, 3)) * 50).astype(np.uint8)
            for k in range(int(rng.integers(1, 3))):
                cat = COCO_CATEGORIES[int(rng.integers(0, 3))]
                w, h = int(rng.integers(10, 20)), int(rng.integers(10, 20))
                x, y = int(rng.integers(0, width - w)), int(rng.integers(0, height - h))
                image[y : y + h, x : x + w] = colour(cat["id"])
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": cat["id"],
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 1 if (i == 0 and k == 0) else 0,
                    }
                )
            name = f"{i + 1:012d}.jpg"
            path = root / f"{split}2017" / name
            path.parent.mkdir(parents=True, exist_ok=True)
            Image.fromarray(image).save(path, quality=95)
            images.append({"id": i + 1, "file_name": name, "height": height, "width": width})
        ann_file = root / "annotations" / f"instances_{split}2017.json"
        ann_file.parent.mkdir(parents=True, exist_ok=True)
        ann_file.write_text(json.dumps({"images": images, "annotations": anns, "categories": COCO_CATEGORIES}))
    return root


def write_imagefolder(
    root: Path, classes: tuple[str, ...] = ("seven", "three"), per_class: int = 4, seed: int = 0
) -> Path:
    """``{train,val}/<class>/*.png``, images of mixed sizes."""
    rng = np.random.default_rng(seed)
    for split in ("train", "val"):
        for k, name in enumerate(classes):
            for j in range(per_class):
                height, width = int(rng.integers(20, 40)), int(rng.integers(20, 40))
                image = np.full((height, width, 3), colour(k * 10), np.uint8)
                _save(root / split / name / f"{j}.png", image)
    return root
