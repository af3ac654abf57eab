"""Weights from anywhere: checkpoint layouts, torchvision enums from the hub cache, mismatches that fail in
one line, and per-model input normalisation that leaves the weights alone."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
import torchvision
import yaml
from tiny_data import run_bad, write_config
from torch import nn

from avatarkd.cli import main
from avatarkd.config import ModelConfig, TrainConfig, validate
from avatarkd.errors import CheckpointError, ConfigError
from avatarkd.models import (
    IMAGENET,
    attach_normalization,
    build_classifier,
    build_detector,
    build_segmenter,
    input_normalization,
    load_weights,
    resolve_factory,
    resolve_normalization,
)
from avatarkd.models.weights import (
    load_into,
    read_state_dict,
    torchvision_cache_file,
    torchvision_weights,
)
from avatarkd.runner import build_model
from avatarkd.tasks import make_task
from avatarkd.tasks.segmentation import backbone_only


def config(task: str, data_root: Path, out: Path, model: dict, steps: int = 1) -> dict:
    return {
        "task": task,
        "seed": 0,
        "output_dir": str(out),
        "data": {"root": str(data_root), "batch_size": 4, "num_classes": 3 if task == "segmentation" else None},
        "model": dict(model),
        "optim": {"lr": 1e-3},
        "train": {"steps": steps, "log_every": 1, "checkpoint_every": steps, "plots": False},
    }


def same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.fixture
def torch_home(tmp_path, monkeypatch) -> Path:
    """An empty hub cache: nothing outside the test is read, nothing is downloaded."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))
    return tmp_path / "torch_home"


def fill_cache(enum_name: str, state: dict[str, torch.Tensor]) -> Path:
    path = torchvision_cache_file(torchvision_weights(enum_name))
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(state, path)
    return path


# ------------------------------------------------------------------ layouts
@pytest.mark.parametrize("layout", ["plain", "state_dict+module.", "model", "model.", "nested", "pickled module"])
def test_whole_model_weights_in_any_common_layout(layout, tmp_path, caplog):
    source = torchvision.models.resnet18(num_classes=2)
    state = source.state_dict()
    obj = {
        "plain": state,
        "state_dict+module.": {"epoch": 3, "state_dict": {f"module.{k}": v for k, v in state.items()}},
        "model": {"model": state, "optimizer": {"lr": 0.1}},
        "model.": {f"model.{k}": v for k, v in state.items()},
        "nested": {"checkpoint_version": 2, "model": {"state_dict": state}},
        "pickled module": source,
    }[layout]
    torch.save(obj, tmp_path / "w.pth")
    model = build_classifier("resnet18", 2)
    assert not same(model.state_dict(), state)
    with caplog.at_level(logging.INFO, logger="avatarkd"):
        report = load_weights(model, tmp_path / "w.pth", "student", allow_pickle=layout == "pickled module")
    assert same(model.state_dict(), state)
    assert report.loaded == len(state) and not report.missing and not report.unexpected
    assert f"loaded {len(state)} tensors; missing: none; unexpected: none" in caplog.text


def test_safetensors_files_load(tmp_path):
    import safetensors.torch as safetensors  # a dependency: never skipped

    state = torchvision.models.resnet18(num_classes=2).state_dict()
    safetensors.save_file({k: v.contiguous() for k, v in state.items()}, str(tmp_path / "w.safetensors"))
    assert same(read_state_dict(tmp_path / "w.safetensors"), state)


def test_ddp_checkpoint_through_train_and_eval_cli(data_root, tmp_path, capsys):
    source = torchvision.models.resnet18(num_classes=2)
    torch.save({"state_dict": {f"module.{k}": v for k, v in source.state_dict().items()}}, tmp_path / "ddp.pth")
    cfg = write_config(
        tmp_path / "c.yaml",
        config(
            "classification",
            data_root,
            tmp_path / "run",
            {"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "ddp.pth")},
        ),
    )
    assert main(["train", str(cfg)]) == 0
    capsys.readouterr()
    assert main(["eval", str(cfg), "--weights", str(tmp_path / "ddp.pth")]) == 0
    top1 = json.loads(capsys.readouterr().out)["top1"]
    # by hand: the source model itself on the validation images (no normalisation: no pretrained weights)
    task = make_task(validate(TrainConfig, yaml.safe_load(cfg.read_text())))
    images, labels = task.collate(list(task.datasets(task.cfg.data)[1]))
    with torch.no_grad():
        expected = (source.eval()(images).argmax(1) == labels).float().mean().item()
    assert top1 == pytest.approx(expected, abs=1e-6)
    # the exported classifier rebuilds with torchvision alone
    meta = json.loads((tmp_path / "run" / "student.json").read_text())
    assert meta["rebuild"]["factory"] == "torchvision.models:resnet18"
    rebuilt = resolve_factory(meta["rebuild"]["factory"])(**meta["rebuild"]["kwargs"])
    rebuilt.load_state_dict(torch.load(tmp_path / "run" / "student.pt", weights_only=True), strict=True)


# ------------------------------------------------------------------ mismatches
def test_resnet34_checkpoint_into_resnet18_fails_in_one_line(data_root, tmp_path, capsys):
    torch.save(torchvision.models.resnet34(num_classes=2).state_dict(), tmp_path / "r34.pth")
    whole = config(
        "classification",
        data_root,
        tmp_path / "a",
        {"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "r34.pth")},
    )
    msg = run_bad(["train", str(write_config(tmp_path / "a.yaml", whole))], capsys)
    assert "do not fit the student architecture" in msg and "layer1.2" in msg
    backbone = config(
        "segmentation",
        data_root,
        tmp_path / "b",
        {"arch": "fcn", "backbone": "resnet18", "backbone_weights": str(tmp_path / "r34.pth")},
    )
    msg = run_bad(["train", str(write_config(tmp_path / "b.yaml", backbone))], capsys)
    assert "do not fit the student backbone architecture" in msg and "layer3.2" in msg
    teacher = config("classification", data_root, tmp_path / "c", {"arch": "classifier", "backbone": "resnet18"})
    teacher["teacher"] = {"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "r34.pth")}
    teacher["distill"] = {"points": [{"name": "l", "student": "fc", "teacher": "fc", "loss": "kd"}]}
    assert "do not fit the teacher architecture" in run_bad(
        ["train", str(write_config(tmp_path / "c.yaml", teacher))], capsys
    )
    # another family entirely, missing and corrupt files
    torch.save(torchvision.models.mobilenet_v2().state_dict(), tmp_path / "mnv2.pth")
    other = dict(whole, model={"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "mnv2.pth")})
    assert "no tensor matches" in run_bad(["train", str(write_config(tmp_path / "d.yaml", other))], capsys)
    missing = dict(whole, model={"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "nope.pth")})
    assert "checkpoint not found" in run_bad(["train", str(write_config(tmp_path / "e.yaml", missing))], capsys)
    (tmp_path / "corrupt.pth").write_bytes((tmp_path / "r34.pth").read_bytes()[:2000])
    corrupt = dict(
        whole, model={"arch": "classifier", "backbone": "resnet18", "backbone_weights": str(tmp_path / "corrupt.pth")}
    )
    assert "truncated or corrupted" in run_bad(["train", str(write_config(tmp_path / "f.yaml", corrupt))], capsys)
    # an ImageNet head (1000 classes) into a 2-class model: whole-model weights refuse it
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18_imagenet.pth")
    head = dict(
        whole, model={"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "r18_imagenet.pth")}
    )
    assert "fc.weight: file (1000, 512) vs model (2, 512)" in run_bad(
        ["train", str(write_config(tmp_path / "g.yaml", head))], capsys
    )
    assert not any((tmp_path / n).exists() for n in "abcdefg")


def test_classifier_checkpoint_as_backbone_weights_leaves_the_head_unused(tmp_path, caplog):
    state = torchvision.models.resnet18().state_dict()  # ImageNet layout: 1000-class fc
    torch.save(state, tmp_path / "r18.pth")
    classifier = build_classifier("resnet18", 2)
    head_before = classifier.fc.weight.clone()
    with caplog.at_level(logging.INFO, logger="avatarkd"):
        load_weights(classifier, tmp_path / "r18.pth", "student", backbone_only=True)
    assert torch.equal(classifier.layer4[1].conv2.weight, state["layer4.1.conv2.weight"])
    assert torch.equal(classifier.fc.weight, head_before)  # the 2-class head keeps its initialisation
    assert "missing: fc (2); unexpected: fc (2)" in caplog.text
    det = build_detector("retinanet", "resnet18", 2, fpn_channels=32, image_size=64)
    load_weights(det, tmp_path / "r18.pth", "student", backbone_only=True)
    body = det.backbone.body.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in body.items() if not k.endswith("num_batches_tracked"))


# ------------------------------------------------------------------ torchvision enums from the hub cache
def test_weights_enum_resolves_from_a_prefilled_torch_home(torch_home, data_root, tmp_path):
    assert not torch_home.exists()
    r18 = torchvision.models.resnet18().state_dict()
    cached = fill_cache("ResNet18_Weights.IMAGENET1K_V1", r18)
    assert cached == torch_home / "hub" / "checkpoints" / "resnet18-f37072fd.pth"
    mnv2 = torchvision.models.mobilenet_v2().state_dict()
    fill_cache("MobileNet_V2_Weights.IMAGENET1K_V1", mnv2)

    raw = config(
        "segmentation",
        data_root,
        tmp_path / "run",
        {"arch": "deeplabv3", "backbone": "resnet18", "backbone_weights": "torchvision:ResNet18_Weights.IMAGENET1K_V1"},
    )
    cfg = validate(TrainConfig, raw)
    task = make_task(cfg)
    task.datasets(cfg.data)
    model = build_model(task, cfg.model, "student", torch.device("cpu"))
    extractor = model.backbone.state_dict()
    assert extractor and all(torch.equal(v, r18[k]) for k, v in extractor.items())
    assert input_normalization(model) == IMAGENET  # pretrained backbone: ImageNet statistics by default

    # MobileNetV2 as the backbone of a segmenter and of a detector: 'features.' keys into the extractor
    for mcfg in ({"arch": "lraspp", "backbone": "mobilenet_v2"}, {"arch": "deeplabv3", "backbone": "mobilenet_v2"}):
        m = build_model(
            task,
            ModelConfig(**mcfg, backbone_weights="torchvision:MobileNet_V2_Weights.IMAGENET1K_V1"),
            "teacher",
            torch.device("cpu"),
        )
        body = m.backbone.body if mcfg["arch"] == "lraspp" else m.backbone
        assert all(torch.equal(v, mnv2[f"features.{k}"]) for k, v in body.state_dict().items())
    det = build_detector("fcos", "mobilenet_v2", 2, fpn_channels=32, image_size=64)
    load_weights(det, "torchvision:MobileNet_V2_Weights.IMAGENET1K_V1", "student", backbone_only=True)
    assert all(torch.equal(v, mnv2[f"features.{k}"]) for k, v in det.backbone.body.state_dict().items())

    # the whole torchvision classifier by enum, through a factory
    whole = build_model(
        task,
        ModelConfig(
            factory="torchvision.models:resnet18",
            kwargs={"weights": None, "num_classes": 1000},
            weights="torchvision:ResNet18_Weights.IMAGENET1K_V1",
        ),
        "teacher",
        torch.device("cpu"),
    )
    assert same(whole.state_dict(), r18)


def test_weights_enum_absent_or_misspelt_gives_one_line(torch_home, data_root, tmp_path, capsys):
    model = {
        "arch": "fcn",
        "backbone": "mobilenet_v2",
        "backbone_weights": "torchvision:MobileNet_V2_Weights.IMAGENET1K_V1",
    }
    msg = run_bad(
        ["train", str(write_config(tmp_path / "a.yaml", config("segmentation", data_root, tmp_path / "a", model)))],
        capsys,
    )
    assert "mobilenet_v2-b0353104.pth is not in" in msg and str(torch_home / "hub" / "checkpoints") in msg
    assert "never downloads" in msg
    model = dict(model, backbone_weights="torchvision:MobileNet_V2_Weights.IMAGENET1K_V3")
    msg = run_bad(
        ["train", str(write_config(tmp_path / "b.yaml", config("segmentation", data_root, tmp_path / "b", model)))],
        capsys,
    )
    assert "unknown torchvision weights; did you mean 'MobileNet_V2_Weights.IMAGENET1K_V" in msg
    model = dict(model, backbone_weights="torchvision:MobileNetV2_Weights.IMAGENET1K_V1")
    msg = run_bad(
        ["train", str(write_config(tmp_path / "c.yaml", config("segmentation", data_root, tmp_path / "c", model)))],
        capsys,
    )
    assert "did you mean 'MobileNet_V2_Weights.IMAGENET1K_V1'" in msg
    assert not list(torch_home.rglob("*.pth")) and not any((tmp_path / n).exists() for n in "abc")


# ------------------------------------------------------------------ input normalisation
def test_normalisation_is_a_pre_hook_that_leaves_weights_and_paths_alone():
    model = build_segmenter("fcn", "resnet18", 3).eval()
    keys = list(model.state_dict())
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        plain = model(x)["out"]
        attach_normalization(model, IMAGENET)
        hooked = model(x)["out"]
        mean = torch.tensor(IMAGENET.mean).view(1, 3, 1, 1)
        std = torch.tensor(IMAGENET.std).view(1, 3, 1, 1)
        attach_normalization(model, None)
        manual = model((x - mean) / std)["out"]
        assert torch.equal(model(x)["out"], plain)  # detached again
        attach_normalization(model, IMAGENET)
        # the teacher's backbone-only forward normalises too
        assert torch.allclose(backbone_only(model, x)["out"], model.backbone((x - mean) / std)["out"])
    assert not torch.allclose(plain, hooked) and torch.allclose(hooked, manual, atol=1e-6)
    assert list(model.state_dict()) == keys


def test_detectors_normalise_in_their_transform_from_the_config():
    det = build_detector("retinanet", "resnet18", 2, fpn_channels=32, image_size=64)
    keys = list(det.state_dict())
    attach_normalization(det, None)
    assert det.transform.image_mean == [0.0] and det.transform.image_std == [1.0]
    attach_normalization(
        det, resolve_normalization(ModelConfig(arch="retinanet", normalize={"mean": [0.5] * 3, "std": [0.25] * 3}))
    )
    assert det.transform.image_mean == [0.5] * 3 and det.transform.image_std == [0.25] * 3
    assert not det._forward_pre_hooks and list(det.state_dict()) == keys


def test_default_normalisation_follows_the_weights(tmp_path):
    assert resolve_normalization(ModelConfig(arch="fcn")) is None
    assert resolve_normalization(ModelConfig(arch="fcn", backbone_weights="x.pth")) == IMAGENET
    assert (
        resolve_normalization(ModelConfig(arch="fcn", weights="torchvision:ResNet18_Weights.IMAGENET1K_V1")) == IMAGENET
    )
    assert resolve_normalization(ModelConfig(arch="fcn", backbone_weights="x.pth", normalize="none")) is None
    with pytest.raises(ConfigError, match="std"):
        validate(ModelConfig, {"arch": "fcn", "normalize": {"mean": [0.5], "std": [0.0]}})


def test_exported_normalisation_is_what_a_teacher_loaded_from_it_uses(data_root, tmp_path):
    """A student trained with ImageNet statistics, then used as a teacher by its student.pt: same inputs."""
    torch.save(torchvision.models.resnet18().state_dict(), tmp_path / "r18.pth")
    cfg = write_config(
        tmp_path / "c.yaml",
        config(
            "classification",
            data_root,
            tmp_path / "run",
            {"arch": "classifier", "backbone": "resnet18", "backbone_weights": str(tmp_path / "r18.pth")},
        ),
    )
    assert main(["train", str(cfg)]) == 0
    meta = json.loads((tmp_path / "run" / "student.json").read_text())
    assert meta["normalize"] == {"mean": list(IMAGENET.mean), "std": list(IMAGENET.std)}
    raw = config(
        "classification",
        data_root,
        tmp_path / "x",
        {"arch": "classifier", "backbone": "resnet18", "weights": str(tmp_path / "run" / "student.pt")},
    )
    tcfg = validate(TrainConfig, raw)
    task = make_task(tcfg)
    task.datasets(tcfg.data)
    teacher = build_model(task, tcfg.model, "teacher", torch.device("cpu"))
    assert input_normalization(teacher) == IMAGENET
    assert same(teacher.state_dict(), torch.load(tmp_path / "run" / "student.pt", weights_only=True))


def test_loading_errors_are_checkpoint_errors():
    with pytest.raises(CheckpointError, match="no tensor matches"):
        load_into(build_classifier("resnet18", 2), {"foo.bar": torch.zeros(1)}, "x", "student")
    with pytest.raises(CheckpointError, match="1 model tensors not in the file"):
        load_into(nn.Linear(2, 2), {"weight": torch.zeros(2, 2)}, "x", "student")
    with pytest.raises(CheckpointError, match="holds no model weights"):
        from avatarkd.models.weights import state_dict_of

        state_dict_of({"epoch": 3, "lr": 0.1}, "x")
