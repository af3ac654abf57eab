"""The published dataset formats: layouts, exact label mappings, class names, image modes, bad input."""

from __future__ import annotations

import json
from pathlib import Path
from typing import get_args

import numpy as np
import pytest
import torch
from format_trees import COCO_CATEGORIES, write_ade20k, write_cityscapes, write_coco, write_imagefolder, write_voc
from PIL import Image

from avatarkd.config import DATA_FORMATS, DataConfig, DataFormat, TrainConfig, validate
from avatarkd.data import FORMATS, check_dataset, innermost, open_dataset
from avatarkd.data.io import read_rgb
from avatarkd.data.labels import ADE20K_CLASSES, CITYSCAPES_CLASSES, VOC_CLASSES
from avatarkd.errors import ConfigError
from avatarkd.metrics import CocoEvaluator
from avatarkd.tasks import make_task


def mask_of(ds, index: int = 0) -> torch.Tensor:
    """The reader's mask, before the training split's random augmentation (which may flip it)."""
    return innermost(ds)[index][1]


def test_every_config_format_has_a_reader():
    assert set(FORMATS) == set(DATA_FORMATS) == set(get_args(DataFormat))


# ----------------------------------------------------------------------------- label mappings
def test_cityscapes_label_ids_map_to_the_19_train_ids(tmp_path):
    root = write_cityscapes(tmp_path / "cs")
    label_file = next((root / "gtFine" / "val").glob("*/*_gtFine_labelIds.png"))
    stored = np.tile(np.arange(34, dtype=np.uint8), (32, 2))[:, :64]  # every labelId 0..33, image-sized
    Image.fromarray(stored).save(label_file)
    ds = open_dataset("segmentation", "cityscapes", root, "val")
    index = [i for i, (_, m) in enumerate(innermost(ds).pairs) if m == label_file][0]
    mask = mask_of(ds, index)
    assert mask.shape == (32, 64) and mask.dtype == torch.int64
    mapping = {
        int(s): int(t) for s, t in zip(torch.from_numpy(stored.astype(np.int64)).flatten(), mask.flatten(), strict=True)
    }
    assert [mapping[i] for i in (7, 24, 26, 33)] == [0, 11, 13, 18]
    train_ids = {
        7: 0,
        8: 1,
        11: 2,
        12: 3,
        13: 4,
        17: 5,
        19: 6,
        20: 7,
        21: 8,
        22: 9,
        23: 10,
        24: 11,
        25: 12,
        26: 13,
        27: 14,
        28: 15,
        31: 16,
        32: 17,
        33: 18,
    }
    assert mapping == {i: train_ids.get(i, 255) for i in range(34)}  # every other id is ignored


def test_voc_palette_indices_are_kept_with_the_boundary_as_ignore(tmp_path):
    root = write_voc(tmp_path / "voc")
    ds = open_dataset("segmentation", "voc", root, "train")
    mask = mask_of(ds)
    stored = np.asarray(Image.open(innermost(ds).pairs[0][1]))
    assert Image.open(innermost(ds).pairs[0][1]).mode == "P"
    assert sorted(np.unique(stored).tolist()) == [0, 15, 255]
    assert torch.equal(mask, torch.from_numpy(stored.astype(np.int64)))  # 0 / 15 / 255 as stored
    assert tuple(mask.shape) == ds[0][0].shape[-2:] == (30, 40)


def test_ade20k_zero_is_ignored_and_classes_shift_down(tmp_path):
    root = write_ade20k(tmp_path / "ade")
    ds = open_dataset("segmentation", "ade20k", root, "train")
    stored = torch.from_numpy(np.asarray(Image.open(innermost(ds).pairs[0][1])).astype(np.int64))
    mask = mask_of(ds)
    assert sorted(stored.unique().tolist()) == [0, 1, 13, 150]
    for raw, mapped in ((0, 255), (1, 0), (150, 149), (13, 12)):
        assert torch.all(mask[stored == raw] == mapped)


# ----------------------------------------------------------------------------- class names and counts
@pytest.mark.parametrize(
    "fmt, writer, task, count, first, last",
    [
        ("cityscapes", write_cityscapes, "segmentation", 19, "road", "bicycle"),
        ("voc", write_voc, "segmentation", 21, "background", "tvmonitor"),
        ("ade20k", write_ade20k, "segmentation", 150, "wall", "flag"),
        ("coco", write_coco, "detection", 3, "person", "dog"),
        ("imagefolder", write_imagefolder, "classification", 2, "seven", "three"),
    ],
)
def test_class_names_come_from_the_format(tmp_path, fmt, writer, task, count, first, last):
    root = writer(tmp_path / fmt)
    cfg = validate(TrainConfig, {"task": task, "data": {"format": fmt, "root": str(root)}, "model": {"arch": "x"}})
    t = make_task(cfg)
    train, val = t.datasets(cfg.data)
    assert t.num_classes == count and len(t.class_names) == count
    assert t.class_names[0] == first and t.class_names[-1] == last
    assert val.class_names == t.class_names
    fixed = {"cityscapes": CITYSCAPES_CLASSES, "voc": VOC_CLASSES, "ade20k": ADE20K_CLASSES}
    if fmt in fixed:
        assert tuple(t.class_names) == fixed[fmt] and innermost(train).class_source == f"the {fmt} format"
    if fmt == "coco":
        assert t.class_names == [c["name"] for c in COCO_CATEGORIES]


def test_own_folder_without_names_gets_generic_names_from_a_scan(tmp_path):
    """A user's folders (explicit paths, no root) never borrow the bundled data's Fashion-MNIST names."""
    for split in ("train", "val"):
        for i, (h, w) in enumerate(((20, 24), (18, 30))):
            Image.fromarray(np.full((h, w, 3), 90, np.uint8)).save(_mkdir(tmp_path / split / "im") / f"{i}.png")
            labels = np.zeros((h, w), np.uint8)
            labels[:, : w // 2] = 4 if split == "train" else 2
            labels[0, 0] = 255
            Image.fromarray(labels).save(_mkdir(tmp_path / split / "lb") / f"{i}.png")
    data = {f"{s}_{k}": str(tmp_path / s / d) for s in ("train", "val") for k, d in (("images", "im"), ("masks", "lb"))}
    cfg = validate(TrainConfig, {"task": "segmentation", "data": data, "model": {"arch": "x"}})
    t = make_task(cfg)
    train, _ = t.datasets(cfg.data)
    assert t.num_classes == 5 and t.class_names == [f"class_{i}" for i in range(5)]
    assert "scan of the 2 masks" in innermost(train).class_source
    cfg = validate(
        TrainConfig,
        {"task": "segmentation", "model": {"arch": "x"}, "data": {**data, "class_names": ["bg", "a", "b", "c", "d"]}},
    )
    t = make_task(cfg)
    t.datasets(cfg.data)
    assert t.class_names == ["bg", "a", "b", "c", "d"]


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def test_class_names_override_and_contradictions(tmp_path):
    root = write_voc(tmp_path / "voc")
    names = [f"c{i}" for i in range(21)]
    ds = open_dataset("segmentation", "voc", root, "train", config=DataConfig(class_names=names))
    assert ds.class_names == names and "data.class_names" in innermost(ds).class_source
    with pytest.raises(ConfigError, match="data.num_classes: 20 given, but the voc format has 21 classes"):
        open_dataset("segmentation", "voc", root, "train", config=DataConfig(num_classes=20))
    with pytest.raises(ConfigError, match="data.class_names: 2 names given"):
        open_dataset(
            "detection", "coco", write_coco(tmp_path / "coco"), "train", config=DataConfig(class_names=["a", "b"])
        )


# ----------------------------------------------------------------------------- image modes
def test_image_modes_are_converted_to_rgb(tmp_path):
    grey = np.array([[0, 128, 255]], np.uint8)
    Image.fromarray(grey, "L").save(tmp_path / "l.png")
    Image.fromarray(np.array([[0, 32768, 65535]], np.uint16)).save(tmp_path / "i16.png")
    rgba = np.zeros((1, 3, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = (10, 20, 30), (0, 128, 255)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(np.stack([grey, grey], -1), "LA").save(tmp_path / "la.png")
    pal = Image.new("P", (3, 1))
    pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255])
    pal.putdata([0, 1, 2])
    pal.save(tmp_path / "p.png")
    Image.new("CMYK", (3, 1), (0, 255, 0, 0)).save(tmp_path / "cmyk.jpg", quality=100)
    Image.new("1", (3, 1), 1).save(tmp_path / "bit.png")

    expected_grey = torch.tensor([0, 128, 255]) / 255
    for name in ("l.png", "la.png"):
        image = read_rgb(tmp_path / name)
        assert image.shape == (3, 1, 3) and torch.allclose(image, expected_grey.expand(3, 1, 3))
    sixteen = read_rgb(tmp_path / "i16.png")  # scaled by 1/65535, not clipped at 255
    assert torch.allclose(sixteen[:, 0], torch.tensor([0.0, 32768 / 65535, 1.0]).expand(3, 3))
    rgba_image = read_rgb(tmp_path / "rgba.png")  # alpha dropped, colours kept
    assert torch.allclose(rgba_image[0, 0], torch.tensor([10, 20, 30]) / 255) and rgba_image.shape[0] == 3
    assert torch.equal(read_rgb(tmp_path / "p.png")[:, 0], torch.eye(3))  # palette colours, not indices
    magenta = read_rgb(tmp_path / "cmyk.jpg")[:, 0, 1]
    assert magenta[0] > 0.9 and magenta[1] < 0.1 and magenta[2] > 0.9
    assert torch.equal(read_rgb(tmp_path / "bit.png"), torch.ones(3, 1, 3))


# ----------------------------------------------------------------------------- detection
def test_coco_format_and_crowd_boxes(tmp_path):
    root = write_coco(tmp_path / "coco")
    data = json.loads((root / "annotations" / "instances_train2017.json").read_text())
    crowd = [a for a in data["annotations"] if a["iscrowd"]]
    assert len(crowd) == 1
    ds = innermost(open_dataset("detection", "coco", root, "train"))
    _, target = ds[ds.ids.index(crowd[0]["image_id"])]
    x, y, w, h = crowd[0]["bbox"]
    assert [x, y, x + w, y + h] not in target["boxes"].tolist()  # kept out of the training targets
    assert ds.label_to_cat_id == {1: 1, 2: 3, 3: 18}


def test_cocoeval_ignores_detections_on_crowd_regions(tmp_path):
    """A confident detection on a crowd region is neither a hit nor a false positive (COCO's rule)."""
    Image.fromarray(np.zeros((60, 60, 3), np.uint8)).save(tmp_path / "a.png")
    person = {"id": 1, "image_id": 1, "category_id": 5, "bbox": [2, 2, 20, 20], "area": 400, "iscrowd": 0}
    crowd = {"id": 2, "image_id": 1, "category_id": 5, "bbox": [30, 30, 25, 25], "area": 625, "iscrowd": 1}

    def ap50(anns: list[dict]) -> float:
        (tmp_path / "gt.json").write_text(
            json.dumps(
                {
                    "images": [{"id": 1, "file_name": "a.png", "width": 60, "height": 60}],
                    "annotations": anns,
                    "categories": [{"id": 5, "name": "x"}],
                }
            )
        )
        ds = innermost(
            open_dataset(
                "detection",
                "folders",
                None,
                "val",
                config=DataConfig(val_images=tmp_path, val_annotations=tmp_path / "gt.json"),
            )
        )
        assert ds[0][1]["boxes"].tolist() == [[2, 2, 22, 22]]  # the crowd box is no training target
        evaluator = CocoEvaluator(ds.coco, ds.label_to_cat_id)
        evaluator.update(
            [1],
            [
                {
                    "boxes": torch.tensor([[31.0, 31, 55, 55], [2, 2, 22, 22]]),
                    "scores": torch.tensor([0.99, 0.9]),
                    "labels": torch.tensor([1, 1]),
                }
            ],
        )
        return evaluator.compute()["map_50"]

    assert ap50([person, crowd]) == pytest.approx(1.0)  # the detection on the crowd region is ignored
    assert ap50([person]) < 0.9  # without the crowd region the same detection is a costly false positive


def test_detector_resize_is_configured_from_the_data_config(tmp_path):
    root = write_coco(tmp_path / "coco")
    model = {"arch": "retinanet", "backbone": "resnet18", "fpn_channels": 32, "image_size": 64}

    def built(**data):
        cfg = validate(
            TrainConfig, {"task": "detection", "model": model, "data": {"format": "coco", "root": str(root), **data}}
        )
        task = make_task(cfg)
        task.datasets(cfg.data)
        return task.build_model(cfg.model)

    assert built().transform.min_size == (64,) and built().transform.max_size == 64  # model.image_size
    det = built(min_size=[48, 64, 80], max_size=100)
    assert det.transform.min_size == (48, 64, 80) and det.transform.max_size == 100
    assert built(min_size=800).transform.max_size == 1333  # the usual 800/1333 pair

    # predictions come back in the coordinates of the image as stored (what COCO evaluation compares)
    det = built(min_size=150, max_size=400).eval()
    torch.nn.init.constant_(det.head.classification_head.cls_logits.bias, 4.0)  # every anchor fires
    image = torch.rand(3, 40, 60)
    with torch.no_grad():
        boxes = det([image])[0]["boxes"]
    assert len(boxes) > 10
    assert float(boxes[:, 2].max()) <= 60 + 1e-3 and float(boxes[:, 3].max()) <= 40 + 1e-3
    assert float(boxes[:, 2].max()) > 45  # not squeezed either: boxes span the original width


# ----------------------------------------------------------------------------- the pre-flight check
def test_check_reads_a_sample_and_reports(tmp_path):
    root = write_voc(tmp_path / "voc", sizes=((30, 40), (36, 28), (32, 32), (30, 44), (28, 36)) * 2)
    ds = open_dataset("segmentation", "voc", root, "train")
    report = check_dataset(ds, "train", samples=3)
    assert report.images == 5 and report.checked == 3 and report.unreadable == 0
    assert report.classes_seen == {0, 15} and report.num_classes == 21
    assert report.min_size == (28, 32) and report.max_size == (32, 40)  # images 0, 2 and 4
    full = check_dataset(ds, "train", samples=None)
    assert full.checked == 5 and full.min_size == (28, 28) and full.max_size == (36, 44)
