"""Dataset loaders: formats, label mapping, augmentation, one-line errors, and the bundled demo data."""

from __future__ import annotations

import importlib.util
import json
import logging
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from avatarkd.data import (
    Augmented,
    CocoDetection,
    ImageFolderDataset,
    SegmentationPairs,
    collate_detection,
    demo_data_root,
)
from avatarkd.data.segmentation import pair_by_stem
from avatarkd.data.transforms import ClassificationAugment, DetectionAugment, SegmentationAugment
from avatarkd.errors import DataError

REPO = Path(__file__).resolve().parent.parent


def segmentation_folder(images: Path, masks: Path, **kwargs) -> SegmentationPairs:
    """What the ``folders`` format builds: same-stem image/mask pairs of two folders."""
    return SegmentationPairs(pair_by_stem(images, masks), kwargs.pop("num_classes", None), name=str(masks), **kwargs)


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


def write_image(path: Path, width: int, height: int, seed: int = 0) -> np.ndarray:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(pixels).save(path)
    return pixels


def write_mask(path: Path, mask: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(mask.astype(np.uint8)).save(path)


# ----------------------------------------------------------------------------- COCO
def coco_json(**overrides: object) -> dict:
    """Three images (one unannotated), sparse category ids 3/7/11, plus a degenerate and a crowd box."""
    data = {
        "images": [
            {"id": 10, "file_name": "a.png", "width": 40, "height": 30},
            {"id": 20, "file_name": "sub/b.png", "width": 20, "height": 20},
            {"id": 30, "file_name": "c.png", "width": 16, "height": 16},
        ],
        "annotations": [
            {"id": 1, "image_id": 10, "category_id": 7, "bbox": [2, 3, 10, 5], "area": 40, "iscrowd": 0},
            {"id": 2, "image_id": 10, "category_id": 11, "bbox": [20.5, 1.5, 8, 12], "iscrowd": 0},
            {"id": 3, "image_id": 20, "category_id": 3, "bbox": [1, 1, 4, 4], "area": 16, "iscrowd": 0},
            {"id": 4, "image_id": 20, "category_id": 3, "bbox": [5, 5, 1, 6], "area": 6, "iscrowd": 0},
            {"id": 5, "image_id": 20, "category_id": 7, "bbox": [0, 0, 10, 10], "area": 100, "iscrowd": 1},
        ],
        "categories": [{"id": 11, "name": "bird"}, {"id": 3, "name": "cat"}, {"id": 7, "name": "dog"}],
    }
    data.update(overrides)
    return data


@pytest.fixture
def coco_dir(tmp_path: Path) -> Path:
    write_image(tmp_path / "images" / "a.png", 40, 30, seed=1)
    write_image(tmp_path / "images" / "sub" / "b.png", 20, 20, seed=2)
    write_image(tmp_path / "images" / "c.png", 16, 16, seed=3)
    (tmp_path / "ann.json").write_text(json.dumps(coco_json()))
    return tmp_path


def test_coco_targets_labels_and_boxes(coco_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        ds = CocoDetection(coco_dir / "images", coco_dir / "ann.json")
    assert "dropped 1 degenerate" in caplog.text
    assert len(ds) == 3 and ds.num_classes == 3
    assert ds.cat_names == ["cat", "dog", "bird"]  # sorted by category id
    assert ds.label_to_cat_id == {1: 3, 2: 7, 3: 11}
    assert ds.ann_file == coco_dir / "ann.json" and len(ds.coco.anns) == 5

    image, target = ds[0]
    assert image.dtype == torch.float32 and image.shape == (3, 30, 40)
    expected = np.asarray(Image.open(coco_dir / "images" / "a.png"), np.float32).transpose(2, 0, 1) / 255
    assert torch.allclose(image, torch.from_numpy(expected))
    assert target["boxes"].dtype == torch.float32
    assert target["boxes"].tolist() == [[2, 3, 12, 8], [20.5, 1.5, 28.5, 13.5]]
    assert target["labels"].tolist() == [2, 3] and target["labels"].dtype == torch.int64
    assert target["image_id"].item() == 10 and target["image_id"].dtype == torch.int64
    assert target["area"].tolist() == [40, 96]  # missing area filled with w*h
    assert target["iscrowd"].tolist() == [0, 0]

    _, target = ds[1]  # degenerate (w=1) and crowd boxes are not training targets
    assert target["boxes"].tolist() == [[1, 1, 5, 5]] and target["labels"].tolist() == [1]

    image, target = ds[2]  # unannotated image kept, with empty well-shaped targets
    assert image.shape == (3, 16, 16)
    assert target["boxes"].shape == (0, 4) and target["labels"].shape == (0,)


def test_coco_hflip_mirrors_boxes_and_is_seeded(coco_dir: Path) -> None:
    plain = CocoDetection(coco_dir / "images", coco_dir / "ann.json")
    flipped = Augmented(plain, DetectionAugment(hflip=1.0), seed=0)
    image, target = flipped[0]
    assert torch.equal(image, plain[0][0].flip(-1))
    assert target["boxes"].tolist() == [[40 - 12, 3, 40 - 2, 8], [40 - 28.5, 1.5, 40 - 20.5, 13.5]]
    assert plain[0][1]["boxes"].tolist() == [[2, 3, 12, 8], [20.5, 1.5, 28.5, 13.5]]  # no in-place change

    def draws(seed: int) -> list[float]:
        half = Augmented(plain, DetectionAugment(hflip=0.5), seed=seed)
        out = []
        for epoch in range(12):
            half.set_epoch(epoch)
            out.append(half[0][1]["boxes"][0, 0].item())
        return out

    assert draws(5) == draws(5)
    assert set(draws(5)) == {2.0, 28.0}  # both outcomes occur


def test_collate_detection(coco_dir: Path) -> None:
    ds = CocoDetection(coco_dir / "images", coco_dir / "ann.json")
    images, targets = collate_detection([ds[0], ds[2]])
    assert isinstance(images, list) and isinstance(targets, list)
    assert [im.shape[-1] for im in images] == [40, 16]
    assert [t["image_id"].item() for t in targets] == [10, 30]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_dir", "images_nowhere"),
        ("missing_ann", "nothing.json"),
        ("bad_json", "ann.json: invalid JSON"),
        ("unknown_category", "category_id 99"),
        ("no_images", "no images"),
        ("missing_file", "c.png"),
        ("unknown_image", "image_id 77"),
    ],
)
def test_coco_errors_name_the_file(coco_dir: Path, case: str, needle: str) -> None:
    images, ann = coco_dir / "images", coco_dir / "ann.json"
    if case == "missing_dir":
        images = coco_dir / "images_nowhere"
    elif case == "missing_ann":
        ann = coco_dir / "nothing.json"
    elif case == "bad_json":
        ann.write_text('{"images": [1, 2,')
    elif case == "unknown_category":
        data = coco_json()
        data["annotations"][2]["category_id"] = 99
        ann.write_text(json.dumps(data))
    elif case == "no_images":
        ann.write_text(json.dumps(coco_json(images=[], annotations=[])))
    elif case == "missing_file":
        (images / "c.png").unlink()
    elif case == "unknown_image":
        data = coco_json()
        data["annotations"][0]["image_id"] = 77
        ann.write_text(json.dumps(data))
    with pytest.raises(DataError) as info:
        CocoDetection(images, ann)
    message = str(info.value)
    assert needle in message and "\n" not in message
    if case not in ("missing_dir", "missing_file"):
        assert str(ann) in message


def test_coco_corrupt_or_resized_image_names_the_file(coco_dir: Path) -> None:
    ds = CocoDetection(coco_dir / "images", coco_dir / "ann.json")
    (coco_dir / "images" / "sub" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    with pytest.raises(DataError, match=r"sub/b\.png: cannot read image") as info:
        ds[1]
    assert "\n" not in str(info.value)
    write_image(coco_dir / "images" / "a.png", 41, 30)
    with pytest.raises(DataError, match=r"a\.png: image is 41x30 but .*ann\.json says 40x30"):
        ds[0]


# ----------------------------------------------------------------------------- segmentation
@pytest.fixture
def seg_dir(tmp_path: Path) -> Path:
    write_image(tmp_path / "images" / "x.jpg", 8, 6, seed=4)
    write_image(tmp_path / "images" / "y.png", 8, 6, seed=5)
    (tmp_path / "images" / "notes.txt").write_text("not an image")
    mask = np.zeros((6, 8), np.uint8)
    mask[1:4, 2:5] = 2
    mask[0, 7] = 255
    write_mask(tmp_path / "masks" / "x.png", mask)
    write_mask(tmp_path / "masks" / "y.png", np.ones((6, 8)))
    return tmp_path


def test_segmentation_pairs_by_stem(seg_dir: Path) -> None:
    ds = segmentation_folder(seg_dir / "images", seg_dir / "masks", num_classes=3, class_names=["bg", "a", "b"])
    assert len(ds) == 2 and ds.num_classes == 3 and ds.class_names == ["bg", "a", "b"]
    image, mask = ds[0]
    assert image.shape == (3, 6, 8) and image.dtype == torch.float32
    assert 0.0 <= image.min() and image.max() <= 1.0
    assert mask.shape == (6, 8) and mask.dtype == torch.int64
    assert mask[2, 3] == 2 and mask[0, 7] == 255 and mask[0, 0] == 0 and int((mask == 2).sum()) == 9
    assert torch.equal(ds[1][1], torch.ones(6, 8, dtype=torch.int64))


def test_segmentation_hflip_keeps_image_and_mask_aligned(seg_dir: Path) -> None:
    plain = segmentation_folder(seg_dir / "images", seg_dir / "masks")
    flipped = Augmented(plain, SegmentationAugment(hflip=1.0), seed=0)
    image, mask = flipped[0]
    assert torch.equal(image, plain[0][0].flip(-1)) and torch.equal(mask, plain[0][1].flip(-1))
    assert mask[0, 0] == 255


def test_segmentation_palette_mask_reads_indices(tmp_path: Path) -> None:
    write_image(tmp_path / "im" / "p.png", 4, 4)
    palette_mask = Image.new("P", (4, 4), color=3)
    palette_mask.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0, 0, 0, 255])  # index 3 is blue, not grey 3
    (tmp_path / "m").mkdir()
    palette_mask.save(tmp_path / "m" / "p.png")
    _, mask = segmentation_folder(tmp_path / "im", tmp_path / "m")[0]
    assert mask.unique().tolist() == [3]


@pytest.mark.parametrize(
    "case, needle",
    [
        ("missing_image_dir", "nowhere"),
        ("missing_mask_dir", "mask directory not found"),
        ("no_mask", "y.png: no mask for this image"),
        ("empty", "no images found"),
        ("size", "masks/x.png: mask is 7x6 but its image x.jpg is 8x6"),
        ("range", "masks/x.png: mask value 2 is neither a class id in 0..1"),
        ("rgb", "masks/x.png: a label mask must be single-channel"),
        ("corrupt", "images/x.jpg: cannot read image"),
    ],
)
def test_segmentation_errors_name_the_file(seg_dir: Path, case: str, needle: str) -> None:
    images, masks, kwargs = seg_dir / "images", seg_dir / "masks", {}
    if case == "missing_image_dir":
        images = seg_dir / "nowhere"
    elif case == "missing_mask_dir":
        masks = seg_dir / "no_masks"
    elif case == "no_mask":
        (masks / "y.png").unlink()
    elif case == "empty":
        for p in images.iterdir():
            p.unlink()
    elif case == "size":
        write_mask(masks / "x.png", np.zeros((6, 7)))
    elif case == "range":
        kwargs = {"num_classes": 2}
    elif case == "rgb":
        write_image(masks / "x.png", 8, 6)
    elif case == "corrupt":
        (images / "x.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError) as info:
        segmentation_folder(images, masks, **kwargs)[0]
    assert needle in str(info.value) and "\n" not in str(info.value)


# ----------------------------------------------------------------------------- classification
def test_image_folder(tmp_path: Path) -> None:
    write_image(tmp_path / "cls" / "zebra" / "1.png", 5, 4)
    write_image(tmp_path / "cls" / "ant" / "1.png", 5, 4)
    write_image(tmp_path / "cls" / "ant" / "2.jpg", 5, 4)
    (tmp_path / "cls" / "ant" / "readme.txt").write_text("skip me")
    plain = ImageFolderDataset(tmp_path / "cls")
    ds = Augmented(plain, ClassificationAugment(hflip=1.0), seed=0)
    assert plain.classes == ["ant", "zebra"] and ds.num_classes == 2 and len(ds) == 3
    image, label = ds[2]
    assert isinstance(label, int) and label == 1
    assert image.shape == (3, 4, 5) and image.dtype == torch.float32
    original = np.asarray(Image.open(tmp_path / "cls" / "zebra" / "1.png"), np.float32) / 255
    assert torch.allclose(image, torch.from_numpy(original).permute(2, 0, 1).flip(-1))


def test_image_folder_errors(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nowhere"):
        ImageFolderDataset(tmp_path / "nowhere")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match=r"empty: not a usable ImageFolder"):
        ImageFolderDataset(tmp_path / "empty")
    (tmp_path / "bad" / "a").mkdir(parents=True)
    (tmp_path / "bad" / "a" / "broken.png").write_bytes(b"nope")
    with pytest.raises(DataError, match=r"broken\.png: cannot read image"):
        ImageFolderDataset(tmp_path / "bad")[0]


# ----------------------------------------------------------------------------- bundled demo data
def test_demo_data_loads_with_all_three_loaders() -> None:
    root = demo_data_root()
    assert root.is_dir() and (root / "README.md").is_file()
    det = CocoDetection(root / "train" / "images", root / "train" / "annotations.json")
    val = CocoDetection(root / "val" / "images", root / "val" / "annotations.json")
    assert len(det) >= 1000 and len(val) >= 300 and det.num_classes == 10
    assert det.cat_names[0] == "T-shirt/top" and det.cat_names[-1] == "Ankle boot"
    image, target = val[0]
    assert image.shape == (3, 64, 64) and len(target["boxes"]) >= 1
    seg = segmentation_folder(root / "val" / "images", root / "val" / "masks", num_classes=11)
    assert len(seg) == len(val)
    for i in range(0, len(seg), 50):
        image, mask = seg[i]
        assert image.shape[-2:] == mask.shape and int(mask.max()) <= 10
    cls = ImageFolderDataset(root / "classify" / "train")
    assert cls.num_classes == 10 and "t_shirt_top" in cls.classes and len(cls) >= 500
    assert cls[0][0].shape == (3, 32, 32)
    assert len(ImageFolderDataset(root / "classify" / "val")) >= 100


def test_demo_test_split_loads() -> None:
    root = demo_data_root()
    test = CocoDetection(root / "test" / "images", root / "test" / "annotations.json")
    val = CocoDetection(root / "val" / "images", root / "val" / "annotations.json")
    assert len(test) >= 300 and test.num_classes == 10 and test.cat_names == val.cat_names
    image, target = test[0]
    assert image.shape == (3, 64, 64) and len(target["boxes"]) >= 1
    seg = segmentation_folder(root / "test" / "images", root / "test" / "masks", num_classes=11)
    assert len(seg) == len(test)
    image, mask = seg[len(seg) - 1]
    assert image.shape[-2:] == mask.shape and int(mask.max()) <= 10
    cls = ImageFolderDataset(root / "classify" / "test")
    assert cls.classes == ImageFolderDataset(root / "classify" / "val").classes and len(cls) >= 100
    assert cls[0][0].shape == (3, 32, 32)
    # every class is represented in the test canvases
    data = json.loads((root / "test" / "annotations.json").read_text())
    assert {ann["category_id"] for ann in data["annotations"]} == set(range(1, 11))


def test_demo_val_and_test_garments_are_disjoint_halves() -> None:
    root = demo_data_root()
    used = {}
    for split, (first, last) in (("val", (0, 4999)), ("test", (5000, 9999))):
        data = json.loads((root / split / "annotations.json").read_text())
        assert data["info"]["source_split"] == "t10k"
        assert data["info"]["source_indices"] == f"{first}-{last}"
        used[split] = {ann["source_index"] for ann in data["annotations"]}
        assert all(first <= i <= last for i in used[split]), split
    assert not used["val"] & used["test"]


@pytest.mark.parametrize(
    "split, source_split, source_size", [("train", "train", 60000), ("val", "t10k", 10000), ("test", "t10k", 10000)]
)
def test_demo_masks_agree_with_boxes(split: str, source_split: str, source_size: int) -> None:
    folder = demo_data_root() / split
    data = json.loads((folder / "annotations.json").read_text())
    assert data["info"]["source_split"] == source_split  # train and val/test garments come from disjoint splits
    by_image: dict[int, list[dict]] = {}
    for ann in data["annotations"]:
        assert 0 <= ann["source_index"] < source_size
        by_image.setdefault(ann["image_id"], []).append(ann)
    assert len(by_image) == len(data["images"])  # every canvas holds at least one garment
    for info in data["images"]:
        mask = np.asarray(Image.open(folder / "masks" / info["file_name"].replace(".jpg", ".png")))
        covered = np.zeros_like(mask, bool)
        for ann in by_image[info["id"]]:
            x, y, w, h = ann["bbox"]
            region = mask[y : y + h, x : x + w] == ann["category_id"]
            # tight box around visible pixels: every edge row/column touches the garment
            assert region[0].any() and region[-1].any() and region[:, 0].any() and region[:, -1].any()
            assert ann["area"] >= 20 and region.sum() >= ann["area"]
            covered[y : y + h, x : x + w] |= region
        assert np.array_equal(covered, mask > 0), info["file_name"]  # no unlabelled garment pixels


def load_generator():
    spec = importlib.util.spec_from_file_location("make_demo_data", REPO / "scripts" / "make_demo_data.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("make_demo_data", module)  # dataclasses look their module up while exec'ing
    spec.loader.exec_module(sys.modules["make_demo_data"])
    return sys.modules["make_demo_data"]


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="needs Debian package dataset-fashion-mnist")
def test_generator_is_deterministic(tmp_path: Path) -> None:
    gen = load_generator()
    args = [
        "--n-train",
        "5",
        "--n-val",
        "3",
        "--n-test",
        "4",
        "--cls-train",
        "1",
        "--cls-val",
        "1",
        "--cls-test",
        "2",
        "--seed",
        "3",
    ]
    gen.main(args + ["--out", str(tmp_path / "a")])
    gen.main(args + ["--out", str(tmp_path / "b")])
    for name in (
        "train/annotations.json",
        "val/annotations.json",
        "test/annotations.json",
        "train/masks/00004.png",
        "test/masks/00003.png",
        "README.md",
    ):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    ds = CocoDetection(tmp_path / "a" / "train" / "images", tmp_path / "a" / "train" / "annotations.json")
    assert len(ds) == 5
    assert len(CocoDetection(tmp_path / "a" / "test" / "images", tmp_path / "a" / "test" / "annotations.json")) == 4
    assert len(ImageFolderDataset(tmp_path / "a" / "classify" / "val")) == 10
    assert len(ImageFolderDataset(tmp_path / "a" / "classify" / "test")) == 20
    readme = (tmp_path / "a" / "README.md").read_text()
    assert "--n-test 4" in readme and "--cls-test 2" in readme and "| test | 4 |" in readme


def test_generator_explains_missing_source(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as info:
        load_generator().main(["--source", str(tmp_path / "none"), "--out", str(tmp_path / "out")])
    assert "apt-get install dataset-fashion-mnist" in str(info.value)
    assert not (tmp_path / "out").exists()
