#!/usr/bin/env python
"""Generate the bundled ``fashion_canvas`` demo data from real Fashion-MNIST garments.

Why composites rather than Fashion-MNIST itself: one small, real-pixel source then serves all
three tasks (segmentation masks, detection boxes, classification crops) with exact labels, and
it is small enough to ship inside the package so the demos run offline.

Source: the IDX files of Debian's ``dataset-fashion-mnist`` package (MIT, Zalando Research);
backgrounds: scikit-image's bundled brick/grass/gravel textures (CC0) plus smooth noise.
Same arguments give byte-identical annotation JSON (and identical images for the same
libjpeg/zlib), because every random draw comes from a NumPy generator seeded per split.

Splits and their garments: ``train`` and ``classify/train`` draw from Fashion-MNIST's training
items; ``val``/``classify/val`` from the first half of its test items (t10k indices 0-4999) and
``test``/``classify/test`` from the second half (5000-9999), so no garment is in two splits and
the test split can stay untouched by every decision made on val.

    python scripts/make_demo_data.py --seed 0
"""

from __future__ import annotations

import argparse
import gzip
import json
import logging
import re
import shutil
import struct
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

log = logging.getLogger("make_demo_data")

DEFAULT_SOURCE = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_OUT = Path(__file__).resolve().parent.parent / "avatarkd" / "demo_data" / "fashion_canvas"
CLASS_NAMES = ["T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot"]
SOURCE_FILES = {
    split: (f"{split}-images-idx3-ubyte.gz", f"{split}-labels-idx1-ubyte.gz") for split in ("train", "t10k")
}


@dataclass(frozen=True)
class SplitSpec:
    """Where one output split takes its garments from, and its own random stream."""

    source_split: str  # "train" or "t10k"
    first: int  # garments come from source indices first..last (inclusive)
    last: int
    stream: int  # the split's generator is np.random.default_rng([seed, stream])

    @property
    def indices(self) -> str:
        return f"{self.first}-{self.last}"

    def pool(self, n_source: int) -> np.ndarray:
        if self.last >= n_source:
            raise SystemExit(f"the {self.source_split} source has {n_source} items; split needs {self.indices}")
        return np.arange(self.first, self.last + 1)


# Each split has its own stream; 1-4 are the ones train/val always used, so train is unchanged.
DETECTION_SPLITS = {
    "train": SplitSpec("train", 0, 59999, 1),
    "val": SplitSpec("t10k", 0, 4999, 2),
    "test": SplitSpec("t10k", 5000, 9999, 5),
}
CLASSIFY_SPLITS = {
    "train": SplitSpec("train", 0, 59999, 3),
    "val": SplitSpec("t10k", 0, 4999, 4),
    "test": SplitSpec("t10k", 5000, 9999, 6),
}

CANVAS = 64  # detection/segmentation canvas side, px
CROP = 32  # classification image side, px
SCALE = (18, 40)  # garment side on a canvas, px (inclusive)
CROP_SCALE = (16, 28)  # garment side on a classification image, px (inclusive)
THRESHOLD = 48  # Fashion-MNIST intensity above which a pixel belongs to the garment
MIN_VISIBLE = 20  # items with fewer visible pixels are dropped (too occluded to label)
JPEG_QUALITY = 90


# --------------------------------------------------------------------------- source data
def read_idx(path: Path, magic: int) -> np.ndarray:
    """An IDX array (the MNIST file format): big-endian magic, dimension sizes, then uint8 data."""
    with gzip.open(path, "rb") as f:
        raw = f.read()
    found = struct.unpack(">I", raw[:4])[0]
    if found != magic:
        raise SystemExit(f"{path}: not an IDX file of the expected kind (magic {found:#x}, expected {magic:#x})")
    ndim = magic & 0xFF
    shape = struct.unpack(">" + "I" * ndim, raw[4 : 4 + 4 * ndim])
    return np.frombuffer(raw, np.uint8, offset=4 + 4 * ndim).reshape(shape)


def load_split(source: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    images_name, labels_name = SOURCE_FILES[split]
    images_path, labels_path = source / images_name, source / labels_name
    for path in (images_path, labels_path):
        if not path.is_file():
            raise SystemExit(
                f"Fashion-MNIST file {path} not found: run `apt-get install dataset-fashion-mnist` "
                f"or pass --source DIR holding {images_name} and {labels_name}"
            )
    images, labels = read_idx(images_path, 0x0803), read_idx(labels_path, 0x0801)
    if len(images) != len(labels):
        raise SystemExit(f"{source}: {len(images)} images but {len(labels)} labels in the {split} split")
    return images, labels


def load_textures() -> list[np.ndarray]:
    try:
        from skimage import data
    except ImportError:
        raise SystemExit("scikit-image is needed for the background textures: pip install scikit-image") from None
    return [getattr(data, name)().astype(np.float32) for name in ("brick", "grass", "gravel")]


# --------------------------------------------------------------------------- drawing
def resize(array: np.ndarray, size: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array.astype(np.float32)).resize((size, size), Image.BILINEAR))


def random_colour(rng: np.random.Generator) -> np.ndarray:
    """A saturated, bright RGB colour (via HSV) so garments differ from the mostly dull backgrounds."""
    h, s, v = rng.random(), rng.uniform(0.35, 1.0), rng.uniform(0.65, 1.0)
    i, f = int(h * 6) % 6, h * 6 - int(h * 6)
    p, q, t = v * (1 - s), v * (1 - f * s), v * (1 - (1 - f) * s)
    rgb = [(v, t, p), (q, v, p), (p, v, t), (p, q, v), (t, p, v), (v, p, q)][i]
    return np.asarray(rgb, np.float32) * 255


def background(rng: np.random.Generator, textures: list[np.ndarray], size: int) -> np.ndarray:
    """A textured (3 in 4) or smooth-noise (1 in 4) HxWx3 float background in [0, 255]."""
    if rng.random() < 0.25:
        base = rng.uniform(20, 200, 3).astype(np.float32)
        blotches = np.stack([resize(rng.normal(0, 18, (size // 8, size // 8)), size) for _ in range(3)], -1)
        return np.clip(base + blotches, 0, 255)
    texture = textures[rng.integers(len(textures))]
    crop = int(rng.integers(size // 2, size * 3 // 4 + 1))  # upscaled crops: coarser grain, smaller files
    y, x = (int(rng.integers(0, texture.shape[i] - crop + 1)) for i in (0, 1))
    grey = resize(texture[y : y + crop, x : x + crop], size) * rng.uniform(0.55, 1.25)
    tint = rng.uniform(0.55, 1.0, 3).astype(np.float32)
    return np.clip(grey[..., None] * tint, 0, 255)


@dataclass
class Item:
    label: int  # Fashion-MNIST label 0..9
    source_index: int  # index in the source split's IDX file
    mask: np.ndarray  # HxW bool, where this garment covers the canvas
    colour: np.ndarray  # HxWx3 float, its pixels (meaningful where mask)


def place(
    rng: np.random.Generator, images: np.ndarray, labels: np.ndarray, index: int, size: int, scale: tuple[int, int]
) -> Item:
    """Garment ``index`` scaled, tinted and placed wholly inside a ``size`` canvas."""
    side = int(rng.integers(scale[0], scale[1] + 1))
    intensity = resize(images[index], side)
    x, y = (int(rng.integers(0, size - side + 1)) for _ in range(2))
    mask = np.zeros((size, size), bool)
    mask[y : y + side, x : x + side] = intensity > THRESHOLD
    shade = np.zeros((size, size), np.float32)
    shade[y : y + side, x : x + side] = 0.3 + 0.7 * np.clip(intensity, 0, 255) / 255
    colour = shade[..., None] * random_colour(rng)
    return Item(int(labels[index]), index, mask, colour)


def draw_item(
    rng: np.random.Generator,
    images: np.ndarray,
    labels: np.ndarray,
    size: int,
    scale: tuple[int, int],
    pool: np.ndarray,
) -> Item:
    """A garment from ``pool`` with at least MIN_VISIBLE pixels of its own (resampled otherwise)."""
    while True:
        item = place(rng, images, labels, int(pool[rng.integers(len(pool))]), size, scale)
        if item.mask.sum() >= MIN_VISIBLE:
            return item


def owners(items: list[Item], size: int) -> np.ndarray:
    """Per pixel, the index of the topmost item covering it (-1: background); later items occlude."""
    owner = np.full((size, size), -1, np.int64)
    for k, item in enumerate(items):
        owner[item.mask] = k
    return owner


def compose(
    rng: np.random.Generator, textures: list[np.ndarray], images: np.ndarray, labels: np.ndarray, pool: np.ndarray
) -> tuple[np.ndarray, np.ndarray, list[tuple[Item, np.ndarray]]]:
    """(RGB uint8 canvas, class mask uint8, [(item, visible mask)]) for 1-3 garments from ``pool``.

    Items left with fewer than MIN_VISIBLE visible pixels are removed from the picture entirely
    (not just from the labels), so every garment pixel in the image is labelled; removing an item
    only uncovers others, so the survivors stay above the threshold.
    """
    items = [draw_item(rng, images, labels, CANVAS, SCALE, pool) for _ in range(int(rng.integers(1, 4)))]
    owner = owners(items, CANVAS)
    visible = np.bincount(owner[owner >= 0], minlength=len(items))
    if (visible < MIN_VISIBLE).any():
        items = [item for item, n in zip(items, visible, strict=True) if n >= MIN_VISIBLE]
        owner = owners(items, CANVAS)
    canvas = background(rng, textures, CANVAS)
    mask = np.zeros((CANVAS, CANVAS), np.uint8)
    placed = []
    for k, item in enumerate(items):
        seen = owner == k
        canvas[seen] = item.colour[seen]
        mask[seen] = item.label + 1
        placed.append((item, seen))
    return np.clip(canvas + 0.5, 0, 255).astype(np.uint8), mask, placed


# --------------------------------------------------------------------------- writers
def sanitise(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")


def write_detection_split(
    out: Path, split: str, n: int, seed: int, textures: list[np.ndarray], images: np.ndarray, labels: np.ndarray
) -> dict[str, int]:
    spec = DETECTION_SPLITS[split]
    rng = np.random.default_rng([seed, spec.stream])
    pool = spec.pool(len(images))
    (out / split / "images").mkdir(parents=True)
    (out / split / "masks").mkdir(parents=True)
    coco_images, annotations = [], []
    for i in range(n):
        image, mask, placed = compose(rng, textures, images, labels, pool)
        stem = f"{i:05d}"
        Image.fromarray(image).save(out / split / "images" / f"{stem}.jpg", quality=JPEG_QUALITY, optimize=True)
        Image.fromarray(mask).save(out / split / "masks" / f"{stem}.png", optimize=True)
        coco_images.append({"id": i + 1, "file_name": f"{stem}.jpg", "width": CANVAS, "height": CANVAS})
        for item, seen in placed:
            ys, xs = np.nonzero(seen)
            x0, y0, x1, y1 = int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1
            annotations.append(
                {
                    "id": len(annotations) + 1,
                    "image_id": i + 1,
                    "category_id": item.label + 1,
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": int(seen.sum()),
                    "iscrowd": 0,
                    "source_index": item.source_index,
                }
            )
    coco = {
        "info": {
            "description": f"fashion_canvas {split}: Fashion-MNIST garments composited on textures",
            "source": "Fashion-MNIST (Zalando Research), MIT licence",
            "source_split": spec.source_split,
            "source_indices": spec.indices,
            "source_files": list(SOURCE_FILES[spec.source_split]),
            "seed": seed,
            "generator": "scripts/make_demo_data.py",
        },
        "licenses": [{"id": 1, "name": "MIT", "url": "https://opensource.org/licenses/MIT"}],
        "images": coco_images,
        "annotations": annotations,
        "categories": [{"id": k + 1, "name": name, "supercategory": "garment"} for k, name in enumerate(CLASS_NAMES)],
    }
    (out / split / "annotations.json").write_text(json.dumps(coco, separators=(",", ":")) + "\n")
    return {"images": n, "annotations": len(annotations)}


def write_classification_split(
    out: Path, split: str, per_class: int, seed: int, textures: list[np.ndarray], images: np.ndarray, labels: np.ndarray
) -> int:
    spec = CLASSIFY_SPLITS[split]
    rng = np.random.default_rng([seed, spec.stream])
    candidates = spec.pool(len(images))
    for label, name in enumerate(CLASS_NAMES):
        folder = out / "classify" / split / sanitise(name)
        folder.mkdir(parents=True)
        pool = candidates[labels[candidates] == label]
        for j in range(per_class):
            item = draw_item(rng, images, labels, CROP, CROP_SCALE, pool)
            canvas = background(rng, textures, CROP)
            canvas[item.mask] = item.colour[item.mask]
            image = np.clip(canvas + 0.5, 0, 255).astype(np.uint8)
            Image.fromarray(image).save(folder / f"{j:04d}.png", optimize=True)
    return per_class * len(CLASS_NAMES)


def write_readme(out: Path, args: argparse.Namespace, counts: dict[str, dict[str, int]]) -> None:
    val, test = DETECTION_SPLITS["val"], DETECTION_SPLITS["test"]
    classes = "\n".join(f"| {k + 1} | {name} | `{sanitise(name)}` |" for k, name in enumerate(CLASS_NAMES))
    command = (
        f"python scripts/make_demo_data.py --seed {args.seed} --n-train {args.n_train} --n-val {args.n_val} "
        f"--n-test {args.n_test} --cls-train {args.cls_train} --cls-val {args.cls_val} --cls-test {args.cls_test}"
    )
    images_row = (
        f"| `{{train,val,test}}/images/<id>.jpg` | {CANVAS}x{CANVAS} RGB canvases with 1-3 tinted garments "
        f"(JPEG quality {JPEG_QUALITY}) |"
    )
    annotations_row = (
        "| `{train,val,test}/annotations.json` | COCO detection format: tight xyxy-from-visible-mask boxes as "
        "`bbox` [x, y, w, h], `area` = visible pixels, `iscrowd` 0 |"
    )
    text = f"""# fashion_canvas — bundled demo data

Small, real-pixel data for avatarkd's segmentation, detection and classification demos.
Generated by

    {command}

The same command reproduces byte-identical annotation JSON (and, with the same Pillow/libjpeg/zlib,
identical image files).

## Sources and licences

- Garments: **Fashion-MNIST** (Han Xiao, Kashif Rasul, Roland Vollgraf; Zalando Research), MIT licence,
  read from the IDX files of Debian's `dataset-fashion-mnist` package. `train/` and `classify/train/`
  use only the Fashion-MNIST *training* split (`train-*-ubyte.gz`); `val/` and `classify/val/` use only
  items {val.indices} of its *test* split (`t10k-*-ubyte.gz`), and `test/` and `classify/test/` only test
  items {test.indices}, so no garment appears in two splits. Each annotation's `source_index` is the
  garment's index in its source split; `info.source_split` names that split and `info.source_indices`
  the index range drawn from.
- Backgrounds: scikit-image's bundled `brick`, `grass` and `gravel` sample images (random crops,
  brightness and tint). scikit-image (BSD-3-Clause) documents all three as Creative Commons CC0
  (public domain dedication): `brick` and `gravel` from CC0Textures, `grass` from DeviantArt user
  linolafett. Some backgrounds are smooth random noise instead.

## Layout

| path | content |
|---|---|
{images_row}
| `{{train,val,test}}/masks/<id>.png` | 8-bit class masks: 0 background, k+1 for Fashion-MNIST label k |
{annotations_row}
| `classify/{{train,val,test}}/<class>/<id>.png` | {CROP}x{CROP} RGB, one garment on a background |

A garment pixel is one whose Fashion-MNIST intensity exceeds {THRESHOLD}; later garments occlude
earlier ones, and a garment with fewer than {MIN_VISIBLE} visible pixels is removed from the picture.

`test/` and `classify/test/` are the held-out split: choose models, schedules and loss weights on
`val/`, and report on `test/` only what was chosen there.

## Counts

| split | images | annotations |
|---|---|---|
| train | {counts["train"]["images"]} | {counts["train"]["annotations"]} |
| val | {counts["val"]["images"]} | {counts["val"]["annotations"]} |
| test | {counts["test"]["images"]} | {counts["test"]["annotations"]} |
| classify/train | {counts["classify"]["train"]} | {args.cls_train} per class |
| classify/val | {counts["classify"]["val"]} | {args.cls_val} per class |
| classify/test | {counts["classify"]["test"]} | {args.cls_test} per class |

## Classes

| id | Fashion-MNIST name | classify folder |
|---|---|---|
{classes}
"""
    (out / "README.md").write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT, help="output folder (default: the bundled one)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-train", type=int, default=1500, help="training canvases")
    parser.add_argument("--n-val", type=int, default=400, help="validation canvases")
    parser.add_argument("--n-test", type=int, default=400, help="held-out test canvases")
    parser.add_argument("--cls-train", type=int, default=100, help="classification images per class, train")
    parser.add_argument("--cls-val", type=int, default=30, help="classification images per class, val")
    parser.add_argument("--cls-test", type=int, default=30, help="classification images per class, test")
    parser.add_argument(
        "--source", type=Path, default=DEFAULT_SOURCE, help="folder with the Fashion-MNIST IDX .gz files"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")

    train_images, train_labels = load_split(args.source, "train")
    test_images, test_labels = load_split(args.source, "t10k")
    textures = load_textures()
    for sub in ("train", "val", "test", "classify", "README.md"):
        target = args.out / sub
        if target.is_dir():
            shutil.rmtree(target)
        elif target.exists():
            target.unlink()
    args.out.mkdir(parents=True, exist_ok=True)

    source = {"train": (train_images, train_labels), "t10k": (test_images, test_labels)}
    sizes = {
        "train": (args.n_train, args.cls_train),
        "val": (args.n_val, args.cls_val),
        "test": (args.n_test, args.cls_test),
    }
    counts: dict[str, dict[str, int]] = {
        split: write_detection_split(
            args.out, split, n, args.seed, textures, *source[DETECTION_SPLITS[split].source_split]
        )
        for split, (n, _) in sizes.items()
    }
    counts["classify"] = {
        split: write_classification_split(
            args.out, split, per_class, args.seed, textures, *source[CLASSIFY_SPLITS[split].source_split]
        )
        for split, (_, per_class) in sizes.items()
    }
    write_readme(args.out, args, counts)
    log.info("wrote %s: %s", args.out, json.dumps(counts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
