"""Real-format data through the command line: variable-size training, whole/slide evaluation,
``check-data``, skipping unreadable images, and every bad input as one line with exit status 2."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from format_trees import write_ade20k, write_cityscapes, write_coco, write_imagefolder, write_voc
from PIL import Image
from test_cli import write_config

from avatarkd.cli import main

SEG_MODEL = {"arch": "lraspp", "backbone": "mobilenet_v3_small"}
DET_MODEL = {
    "arch": "retinanet",
    "backbone": "resnet18",
    "fpn_channels": 32,
    "image_size": 64,
    "anchor_sizes": [8, 16, 32, 64, 128],
}


def config(tmp_path: Path, data: dict, task: str = "segmentation", model: dict | None = None, **extra) -> dict:
    return {
        "task": task,
        "seed": 0,
        "output_dir": str(tmp_path / "run"),
        "data": {"batch_size": 2, **data},
        "model": dict(model or SEG_MODEL),
        "optim": {"lr": 1e-3},
        "train": {"steps": 2, "log_every": 1, "checkpoint_every": 2, "plots": True},
        **extra,
    }


def run(argv: list[str], capsys) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(argv)
    captured = capsys.readouterr()
    return code, captured.out, captured.err.strip()


def run_bad(argv: list[str], capsys) -> str:
    code, _, err = run(argv, capsys)
    assert code == 2, err
    assert err.startswith("avatarkd: error: ") and "\n" not in err and "Traceback" not in err
    return err


@pytest.fixture(scope="module")
def voc_root(tmp_path_factory) -> Path:
    return write_voc(tmp_path_factory.mktemp("voc") / "voc")


def test_variable_size_training_and_whole_and_slide_evaluation(voc_root, tmp_path, capsys):
    """VOC images of four sizes: random rescale + crop in training; evaluation at each original size."""
    data = {
        "format": "voc",
        "root": str(voc_root),
        "crop_size": [24, 24],
        "scale_range": [0.75, 1.25],
        "photometric": True,
    }
    cfg = write_config(tmp_path / "voc.yaml", **config(tmp_path, data))
    code, out, err = run(["train", str(cfg)], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert "iou/person" in result and "iou/tvmonitor" in result and "iou/T-shirt/top" not in result
    assert (tmp_path / "run" / "predictions.png").stat().st_size > 0  # drawn from images of different sizes

    weights = str(tmp_path / "run" / "student.pt")
    code, out, err = run(["eval", str(cfg), "--weights", weights], capsys)
    assert code == 0, err
    whole = json.loads(out)
    assert whole["miou"] == pytest.approx(result["miou"], abs=1e-6)  # the same whole-image evaluation
    slide_args = ["--set", "eval.mode=slide", "--set", "eval.crop_size=[16, 16]", "--set", "eval.stride=[8, 8]"]
    code, out, err = run(["eval", str(cfg), "--weights", weights, *slide_args], capsys)
    assert code == 0, err
    slide = json.loads(out)
    assert 0.0 <= slide["miou"] <= 1.0 and slide.keys() == whole.keys()
    # a window larger than every image is one pass over the whole image: the whole-image numbers
    big = ["--set", "eval.mode=slide", "--set", "eval.crop_size=[512, 512]"]
    code, out, err = run(["eval", str(cfg), "--weights", weights, *big], capsys)
    assert code == 0, err
    assert json.loads(out) == pytest.approx(whole, abs=1e-6, nan_ok=True)
    code, out, err = run(["eval", str(cfg), "--weights", weights, "--set", "eval.resize=[20, 20]"], capsys)
    assert code == 0 and 0.0 <= json.loads(out)["miou"] <= 1.0, err


def test_variable_sizes_without_a_crop_say_what_to_set(voc_root, tmp_path, capsys):
    cfg = write_config(tmp_path / "c.yaml", **config(tmp_path, {"format": "voc", "root": str(voc_root)}))
    err = run_bad(["train", str(cfg)], capsys)
    assert "different sizes" in err and "data.crop_size" in err


def test_cityscapes_and_ade20k_train_and_coco_trains_multi_scale(tmp_path, capsys):
    cs = write_cityscapes(tmp_path / "cs")
    cfg = write_config(
        tmp_path / "cs.yaml",
        **config(
            tmp_path,
            {
                "format": "cityscapes",
                "root": str(cs),
                "crop_size": [16, 32],
                "scale_range": [0.5, 2.0],
                "base_size": [32, 64],
            },
            eval={"mode": "slide", "crop_size": [16, 32]},
        ),
    )
    code, _, err = run(["train", str(cfg)], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert "iou/road" in metrics and "iou/bicycle" in metrics
    code, out, err = run(
        ["eval", str(cfg), "--weights", str(tmp_path / "run" / "student.pt"), "--split", "test"], capsys
    )
    assert code == 0, err
    assert "iou/road" in json.loads(out)  # the held-out split, evaluated alone

    ade = write_ade20k(tmp_path / "ade")
    cfg = config(tmp_path, {"format": "ade20k", "root": str(ade), "crop_size": 24})
    cfg["output_dir"] = str(tmp_path / "ade_run")
    code, _, err = run(["train", str(write_config(tmp_path / "ade.yaml", **cfg))], capsys)
    assert code == 0, err
    assert "iou/flag" in json.loads((tmp_path / "ade_run" / "metrics.json").read_text())["metrics"]

    coco = write_coco(tmp_path / "coco")
    cfg = config(
        tmp_path,
        {"format": "coco", "root": str(coco), "min_size": [48, 64], "max_size": 96},
        task="detection",
        model=DET_MODEL,
    )
    cfg["output_dir"] = str(tmp_path / "det_run")
    code, _, err = run(["train", str(write_config(tmp_path / "det.yaml", **cfg))], capsys)
    assert code == 0, err
    assert 0.0 <= json.loads((tmp_path / "det_run" / "metrics.json").read_text())["metrics"]["map"] <= 1.0


def test_imagefolder_of_mixed_sizes_trains_on_crops(tmp_path, capsys):
    root = write_imagefolder(tmp_path / "digits")
    model = {"arch": "classifier", "backbone": "mobilenet_v3_small"}
    data = {"format": "imagefolder", "root": str(root)}
    err = run_bad(
        ["train", str(write_config(tmp_path / "a.yaml", **config(tmp_path, data, "classification", model)))], capsys
    )
    assert "different sizes" in err and "data.crop_size" in err
    cfg = write_config(tmp_path / "b.yaml", **config(tmp_path, {**data, "crop_size": 16}, "classification", model))
    code, _, err = run(["train", str(cfg)], capsys)
    assert code == 0, err
    result = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert 0.0 <= result["metrics"]["top1"] <= 1.0
    assert torch.load(tmp_path / "run" / "checkpoints" / "step_0000002.pt", weights_only=False)["class_names"] == [
        "seven",
        "three",
    ]


def test_check_data_prints_a_table(voc_root, tmp_path, capsys):
    cfg = write_config(
        tmp_path / "c.yaml", **config(tmp_path, {"format": "voc", "root": str(voc_root), "crop_size": 24})
    )
    code, out, err = run(["check-data", str(cfg), "--all"], capsys)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert lines[0].startswith("| split | images | read | unreadable |")
    assert lines[2].startswith("| train | 2 | 2 | 0 | ") and lines[3].startswith("| val | 2 | 2 | 0 | ")
    assert lines[-1] == "data ok: voc format, 21 classes (from the voc format)"
    assert not (tmp_path / "run").exists()  # a check writes nothing


def test_skip_unreadable_counts_and_skips(tmp_path, capsys):
    root = write_cityscapes(tmp_path / "cs", n_train=4, n_val=3)
    broken_train = sorted((root / "leftImg8bit" / "train").glob("*/*.png"))[1]
    broken_val = sorted((root / "leftImg8bit" / "val").glob("*/*.png"))[0]
    for path in (broken_train, broken_val):
        path.write_bytes(b"\x89PNG\r\n\x1a\n truncated")
    data = {"format": "cityscapes", "root": str(root)}
    cfg = write_config(tmp_path / "strict.yaml", **config(tmp_path, data))
    err = run_bad(["check-data", str(cfg)], capsys)
    assert broken_train.name in err and "cannot read image" in err and "data.skip_unreadable" in err
    err = run_bad(["train", str(cfg)], capsys)
    assert broken_train.name in err
    assert not (tmp_path / "run").exists()

    cfg = write_config(tmp_path / "skip.yaml", **config(tmp_path, {**data, "skip_unreadable": True}))
    code, out, err = run(["check-data", str(cfg)], capsys)
    assert code == 0, err
    assert "| train | 4 | 3 | 1 |" in out and "| val | 3 | 2 | 1 |" in out and "2 unreadable images" in out
    code, _, err = run(["train", str(cfg)], capsys)
    assert code == 0, err


# ----------------------------------------------------------------------------- bad input
def _voc_copy(src: Path, dst: Path) -> Path:
    import shutil

    shutil.copytree(src, dst)
    return dst / "VOCdevkit" / "VOC2012"


@pytest.mark.parametrize(
    "case, needles",
    [
        ("wrong_format", ["leftImg8bit/train is missing", "looks like the voc format"]),
        ("missing_root", ["data.root ", "nowhere does not exist; the voc format expects there JPEGImages"]),
        ("absent_in_list", ["train.txt line 3: '2007_999999' is listed but", "2007_999999.jpg does not exist"]),
        ("mask_out_of_range", ["2007_000000.png: mask value 30 is not a label of voc train", "0..20, 255"]),
        ("ade_out_of_range", ["mask value 151 is not a label of ade20k train"]),
        ("unreadable", ["2007_000001.jpg: cannot read image"]),
        ("empty_split", ["val.txt: split 'val' is empty"]),
        ("empty_cityscapes", ["split 'train' is empty"]),
        ("task_format", ["data.format: 'coco' holds detection data, not segmentation"]),
        ("explicit_path", ["data.train_images: the voc format", "does not read explicit paths"]),
        ("format_name", ["data.format", "did you mean 'cityscapes'?"]),
        ("ade_test", ["eval.split: the ade20k format has no annotated 'test' split"]),
        ("num_classes", ["data.num_classes: 19 given, but the voc format has 21 classes"]),
        ("no_root", ["data.root: the voc format needs data.root"]),
    ],
)
def test_bad_data_is_one_line_exit_2_and_writes_nothing(case, needles, voc_root, tmp_path, capsys):
    data: dict = {"format": "voc", "root": str(voc_root)}
    extra: dict = {}
    if case == "wrong_format":
        data["format"] = "cityscapes"
    elif case == "missing_root":
        data["root"] = str(tmp_path / "nowhere")
    elif case == "absent_in_list":
        base = _voc_copy(voc_root, tmp_path / "v")
        data["root"] = str(base)
        with open(base / "ImageSets" / "Segmentation" / "train.txt", "a") as f:
            f.write("2007_999999\n")
    elif case == "mask_out_of_range":
        base = _voc_copy(voc_root, tmp_path / "v")
        data["root"] = str(tmp_path / "v")
        mask = Image.open(base / "SegmentationClass" / "2007_000000.png")
        values = np.asarray(mask).copy()
        values[0, :3] = 30
        bad = Image.fromarray(values, "P")
        bad.putpalette(mask.getpalette())
        bad.save(base / "SegmentationClass" / "2007_000000.png")
    elif case == "ade_out_of_range":
        root = write_ade20k(tmp_path / "ade")
        label = sorted((root / "ADEChallengeData2016" / "annotations" / "training").glob("*.png"))[0]
        values = np.asarray(Image.open(label)).copy()
        values[0, 0] = 151
        Image.fromarray(values).save(label)
        data = {"format": "ade20k", "root": str(root)}
    elif case == "unreadable":
        base = _voc_copy(voc_root, tmp_path / "v")
        data["root"] = str(base)
        (base / "JPEGImages" / "2007_000001.jpg").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    elif case == "empty_split":
        base = _voc_copy(voc_root, tmp_path / "v")
        data["root"] = str(base)
        (base / "ImageSets" / "Segmentation" / "val.txt").write_text("\n")
    elif case == "empty_cityscapes":
        (tmp_path / "cs" / "leftImg8bit" / "train" / "aachen").mkdir(parents=True)
        (tmp_path / "cs" / "gtFine" / "train").mkdir(parents=True)
        data = {"format": "cityscapes", "root": str(tmp_path / "cs")}
    elif case == "task_format":
        data["format"] = "coco"
    elif case == "explicit_path":
        data["train_images"] = str(tmp_path)
    elif case == "format_name":
        data["format"] = "cityscape"
    elif case == "ade_test":
        data = {"format": "ade20k", "root": str(write_ade20k(tmp_path / "ade"))}
        extra = {"eval": {"split": "test"}}
    elif case == "num_classes":
        data["num_classes"] = 19
    elif case == "no_root":
        data.pop("root")
    data.setdefault("crop_size", 16)
    cfg = write_config(tmp_path / "bad.yaml", **config(tmp_path, data, **extra))
    for command in ("train", "check-data"):
        err = run_bad([command, str(cfg), "--set", "data.check_samples=50"], capsys)
        for needle in needles:
            assert needle in err, err
    assert not (tmp_path / "run").exists()
