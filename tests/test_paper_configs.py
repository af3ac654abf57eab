"""The paper's settings (``avatarkd/configs/paper/``): every config trains two steps on a tiny tree of its format.

Only sizes, steps and paths are overridden (the real runs need Cityscapes / COCO); models, losses,
distillation points, augmentation and evaluation mode are the configs' own.
"""

from __future__ import annotations

import json
from importlib import resources
from pathlib import Path

import pytest
import torch
from format_trees import write_cityscapes, write_coco

from avatarkd.config import TrainConfig, apply_overrides, load_yaml, validate
from avatarkd.maskd_tokens import train_tokens
from avatarkd.runner import train
from avatarkd.tasks import make_task

PAPER = resources.files("avatarkd") / "configs" / "paper"
CONFIGS = sorted(p.name for p in PAPER.iterdir() if p.name.endswith(".yaml"))
SMALL = [
    "train.steps=2",
    "train.log_every=1",
    "train.eval_every=null",
    "train.checkpoint_every=2",
    "train.plots=false",
    "data.batch_size=2",
    "data.val_batch_size=2",
    "data.num_workers=0",
    "model.backbone_weights=null",
]  # the ImageNet files are not here (offline); the shapes are what matters
SIZES = {
    "cityscapes": ["data.crop_size=[32, 64]", "data.base_size=[32, 64]"],
    "coco": ["data.min_size=64", "data.max_size=96"],
}
# 6-12 s each on one core (more on a loaded machine); the default suite keeps one config per model pair.
# A teacher config's model is its AKD configs' teacher (checked below), which the default suite builds and
# runs on that config's data: training it only adds ResNet-101 backward passes.
SLOW = {
    "coco_retinanet_r50_mgd_akd.yaml",
    "coco_retinanet_r50_pkd_akd.yaml",
    "coco_retinanet_r101_teacher.yaml",
    "coco_fcos_r101_teacher.yaml",
    "coco_retinanet_r50_maskd_akd.yaml",
    "cityscapes_deeplabv3_r101_teacher.yaml",
}


def test_the_paper_settings_are_all_there():
    assert set(CONFIGS) == {
        "cityscapes_deeplabv3_r101_teacher.yaml",
        "cityscapes_deeplabv3_r18_cwd_akd.yaml",
        "coco_retinanet_r101_teacher.yaml",
        "coco_retinanet_r50_cwd_akd.yaml",
        "coco_retinanet_r50_mgd_akd.yaml",
        "coco_retinanet_r50_pkd_akd.yaml",
        "coco_retinanet_r50_maskd_akd.yaml",
        "coco_fcos_r101_teacher.yaml",
        "coco_fcos_r50_cwd_akd.yaml",
    }
    for name in CONFIGS:
        cfg = validate(TrainConfig, load_yaml(Path(str(PAPER / name))), name)
        if cfg.task == "segmentation":
            assert cfg.data.format == "cityscapes" and cfg.data.crop_size == (512, 1024)
            assert cfg.model.backbone == ("resnet101" if cfg.distill is None else "resnet18")
        else:
            assert cfg.data.format == "coco" and cfg.data.min_sizes() == (800,) and cfg.data.max_size == 1333
            assert cfg.model.backbone == ("resnet101" if cfg.distill is None else "resnet50")
        depth = cfg.model.backbone.removeprefix("resnet")  # pretrained backbones, as the published numbers assume
        assert cfg.model.backbone_weights == f"torchvision:ResNet{depth}_Weights.IMAGENET1K_V1"
        if cfg.distill is not None:
            assert cfg.teacher is not None and cfg.teacher.backbone == "resnet101" and cfg.distill.akd.enabled


def test_each_akd_config_distils_from_its_teacher_config():
    raw = {name: load_yaml(Path(str(PAPER / name))) for name in CONFIGS}
    teachers = {name: r for name, r in raw.items() if r.get("teacher") is None}
    for name, r in raw.items():
        if r.get("teacher") is None:
            continue
        teacher = dict(r["teacher"])
        weights = teacher.pop("weights")
        (source,) = [t for t in teachers.values() if weights == f"{t['output_dir']}/student.pt"]
        assert teacher == {k: v for k, v in source["model"].items() if k != "backbone_weights"}, name
        assert r["data"] == source["data"] and r.get("eval") == source.get("eval"), name


@pytest.fixture(scope="module")
def trees(tmp_path_factory) -> dict[str, Path]:
    base = tmp_path_factory.mktemp("paper_trees")
    return {
        "cityscapes": write_cityscapes(base / "cityscapes", n_train=2, n_val=1),
        "coco": write_coco(base / "coco", n_train=2, n_val=1),
    }


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW else n for n in CONFIGS])
def test_paper_config_trains_two_steps_on_a_tiny_tree_of_its_format(name, trees, tmp_path):
    raw = load_yaml(Path(str(PAPER / name)))
    fmt = raw["data"]["format"]
    raw = apply_overrides(raw, SMALL + SIZES[fmt] + [f"data.root={trees[fmt]}", f"output_dir={tmp_path / 'run'}"])
    if raw.get("teacher"):  # a teacher of the configured architecture (only shapes matter for two steps)
        teacher_cfg = validate(TrainConfig, {**raw, "distill": None, "teacher": None, "model": raw["teacher"]})
        task = make_task(teacher_cfg)
        task.datasets(teacher_cfg.data)
        torch.save(task.build_model(teacher_cfg.model).state_dict(), tmp_path / "teacher.pt")
        raw["teacher"]["weights"] = str(tmp_path / "teacher.pt")
    for point in (raw.get("distill") or {}).get("points", []):
        if "tokens" in point.get("loss_kwargs", {}):  # MasKD stage 1 first, as the config's comment says
            point["loss_kwargs"]["tokens"] = str(tmp_path / "tokens.pt")
            train_tokens(validate(TrainConfig, raw, name), tmp_path / "tokens.pt", steps=1, show_progress=False)
    result = train(validate(TrainConfig, raw, name))
    assert result["step"] == 2 and result["primary_metric"] in result["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if raw.get("distill"):
        assert all(r["distill_total"] > 0 for r in rows if "distill_total" in r)
    if fmt == "cityscapes":
        assert "iou/road" in result["metrics"] and "iou/bicycle" in result["metrics"]
