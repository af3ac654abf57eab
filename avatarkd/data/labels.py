"""The published datasets' classes and label encodings, as lookup tables from stored value to train id.

A stored mask value ``v`` becomes ``lut[v]``; ``IGNORE`` marks pixels that count in neither the
loss nor the metric. Each table is written from the dataset's own documentation:

- Cityscapes stores ``labelIds`` (0..33, see cityscapesScripts ``labels.py``); the benchmark trains
  and evaluates on 19 of them, renumbered 0..18 ("trainIds"); every other id is ignored.
- PASCAL VOC 2012 stores palette indices 0..20 (0 = background) and 255 on object boundaries
  ("void"), which stays ignored.
- ADE20K SceneParsing (ADEChallengeData2016) stores 0 for "other/unlabelled" and 1..150 for its
  classes; 0 is ignored and class k becomes k - 1.
"""

from __future__ import annotations

import numpy as np

IGNORE = 255

# (labelId, name) of the 19 Cityscapes evaluation classes, in trainId order
CITYSCAPES_TRAIN_IDS: tuple[tuple[int, str], ...] = (
    (7, "road"),
    (8, "sidewalk"),
    (11, "building"),
    (12, "wall"),
    (13, "fence"),
    (17, "pole"),
    (19, "traffic light"),
    (20, "traffic sign"),
    (21, "vegetation"),
    (22, "terrain"),
    (23, "sky"),
    (24, "person"),
    (25, "rider"),
    (26, "car"),
    (27, "truck"),
    (28, "bus"),
    (31, "train"),
    (32, "motorcycle"),
    (33, "bicycle"),
)
CITYSCAPES_CLASSES: tuple[str, ...] = tuple(name for _, name in CITYSCAPES_TRAIN_IDS)

VOC_CLASSES: tuple[str, ...] = (
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
)

# ADE20K SceneParsing class 1..150 (first name of each entry of its objectInfo150 list)
ADE20K_CLASSES: tuple[str, ...] = (
    "wall",
    "building",
    "sky",
    "floor",
    "tree",
    "ceiling",
    "road",
    "bed",
    "windowpane",
    "grass",
    "cabinet",
    "sidewalk",
    "person",
    "earth",
    "door",
    "table",
    "mountain",
    "plant",
    "curtain",
    "chair",
    "car",
    "water",
    "painting",
    "sofa",
    "shelf",
    "house",
    "sea",
    "mirror",
    "rug",
    "field",
    "armchair",
    "seat",
    "fence",
    "desk",
    "rock",
    "wardrobe",
    "lamp",
    "bathtub",
    "railing",
    "cushion",
    "base",
    "box",
    "column",
    "signboard",
    "chest of drawers",
    "counter",
    "sand",
    "sink",
    "skyscraper",
    "fireplace",
    "refrigerator",
    "grandstand",
    "path",
    "stairs",
    "runway",
    "case",
    "pool table",
    "pillow",
    "screen door",
    "stairway",
    "river",
    "bridge",
    "bookcase",
    "blind",
    "coffee table",
    "toilet",
    "flower",
    "book",
    "hill",
    "bench",
    "countertop",
    "stove",
    "palm",
    "kitchen island",
    "computer",
    "swivel chair",
    "boat",
    "bar",
    "arcade machine",
    "hovel",
    "bus",
    "towel",
    "light",
    "truck",
    "tower",
    "chandelier",
    "awning",
    "streetlight",
    "booth",
    "television receiver",
    "airplane",
    "dirt track",
    "apparel",
    "pole",
    "land",
    "bannister",
    "escalator",
    "ottoman",
    "bottle",
    "buffet",
    "poster",
    "stage",
    "van",
    "ship",
    "fountain",
    "conveyer belt",
    "canopy",
    "washer",
    "plaything",
    "swimming pool",
    "stool",
    "barrel",
    "basket",
    "waterfall",
    "tent",
    "bag",
    "minibike",
    "cradle",
    "oven",
    "ball",
    "food",
    "step",
    "tank",
    "trade name",
    "microwave",
    "pot",
    "animal",
    "bicycle",
    "lake",
    "dishwasher",
    "screen",
    "blanket",
    "sculpture",
    "hood",
    "sconce",
    "vase",
    "traffic light",
    "tray",
    "ashcan",
    "fan",
    "pier",
    "crt screen",
    "plate",
    "monitor",
    "bulletin board",
    "shower",
    "radiator",
    "glass",
    "clock",
    "flag",
)


def generic_names(count: int) -> list[str]:
    """``class_0 .. class_{n-1}``: what a dataset without names shows (never another dataset's names)."""
    return [f"class_{i}" for i in range(count)]


def identity_lut(num_classes: int, ignore_index: int = IGNORE, size: int = 256) -> np.ndarray:
    """Values 0..num_classes-1 and ``ignore_index`` map to themselves; every other value to -1 (invalid)."""
    lut = np.full(max(size, num_classes, ignore_index + 1), -1, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[ignore_index] = ignore_index
    return lut


def cityscapes_lut(ignore_index: int = IGNORE) -> np.ndarray:
    """labelId -> trainId: the 19 evaluation classes to 0..18, every other id to ``ignore_index``."""
    lut = np.full(256, ignore_index, dtype=np.int64)
    for train_id, (label_id, _) in enumerate(CITYSCAPES_TRAIN_IDS):
        lut[label_id] = train_id
    return lut


def voc_lut(ignore_index: int = IGNORE) -> np.ndarray:
    """Palette index -> class: 0..20 kept, the 255 boundary to ``ignore_index``, anything else invalid."""
    lut = identity_lut(len(VOC_CLASSES), ignore_index)
    lut[IGNORE] = ignore_index
    return lut


def ade20k_lut(ignore_index: int = IGNORE) -> np.ndarray:
    """0 (unlabelled) -> ``ignore_index``, k -> k - 1 for the 150 classes, anything else invalid."""
    lut = np.full(256, -1, dtype=np.int64)
    lut[0] = ignore_index
    lut[1 : len(ADE20K_CLASSES) + 1] = np.arange(len(ADE20K_CLASSES))
    return lut
