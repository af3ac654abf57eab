"""Models from other libraries: smp, Hugging Face, timm; per-side point keys; offline factories.

Each example config in ``examples/`` trains two steps through the CLI on the bundled data, with
random weights. A library that is not installed skips its tests with the reason (``make install``
installs them all: the ``test`` extra).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from tiny_data import SMOKE_RUN, run_bad, write_config
from torch import nn

from avatarkd.cli import main
from avatarkd.config import TrainConfig, validate
from avatarkd.distiller.distiller import select
from avatarkd.models import build_from_factory, build_segmenter, load_configured_weights, resolve_factory

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
SMALL = [*SMOKE_RUN, "data.check_samples=4"]


def train(config: Path, out: Path, *overrides: str) -> int:
    argv = ["train", str(config), "--set", f"output_dir={out}"]
    for item in [*SMALL, *overrides]:
        argv += ["--set", item]
    return main(argv)


def metric_rows(out: Path) -> list[dict]:
    return [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]


def rebuild(exported: Path) -> nn.Module:
    """What a user does without avatarkd: the recorded factory (a config class for Hugging Face), strict load."""
    recipe = json.loads(exported.with_suffix(".json").read_text())["rebuild"]
    factory = resolve_factory(recipe["factory"])
    if recipe.get("via") == "config_class":
        model = factory(factory.config_class(**recipe["kwargs"]))
    else:
        model = factory(**recipe["kwargs"])
    model.load_state_dict(torch.load(exported, weights_only=True), strict=True)
    return model


@pytest.fixture(scope="module")
def fcn_teacher(tmp_path_factory) -> Path:
    """Random weights of the built-in FCN-ResNet18 teacher (seg_teacher.yaml) for the bundled data's 11 classes."""
    path = tmp_path_factory.mktemp("teacher") / "fcn_r18.pt"
    torch.save(build_segmenter("fcn", "resnet18", 11, 8).state_dict(), path)
    return path


# ------------------------------------------------------------------ point keys
def test_select_reads_dict_keys_attributes_indices_and_paths():
    class Output(dict):  # like a Hugging Face ModelOutput: None fields are attributes only
        hidden_states = None

    t = torch.zeros(1)
    out = Output(last_hidden_state=t)
    out.hidden_states = (t + 1, t + 2)
    assert select(out, "last_hidden_state") is t
    assert torch.equal(select(out, ["hidden_states", 1]), t + 2)
    assert torch.equal(select([t, t + 5], -1), t + 5)
    with pytest.raises(KeyError, match="has no item 'out' \\(it is a tensor of shape \\(1,\\)\\)"):
        select(t, "out")
    with pytest.raises(KeyError, match="has no item 2"):
        select(out, ["hidden_states", 2])


def test_key_and_a_side_key_together_are_refused(tmp_path, capsys):
    cfg = {
        "task": "segmentation",
        "model": {"arch": "fcn"},
        "teacher": {"arch": "fcn", "weights": "x.pt"},
        "distill": {"points": [{"name": "f", "student": "backbone", "key": "out", "teacher_key": "out"}]},
    }
    msg = run_bad(["train", str(write_config(tmp_path / "c.yaml", cfg))], capsys)
    assert "give 'key' (the same item of both outputs) or 'student_key'/'teacher_key', not both" in msg


def test_user_tensor_module_distils_from_a_builtin_backbone_dict_with_teacher_key(fcn_teacher, tmp_path, capsys):
    """The issue's case: a user's tensor feature against a built-in ``backbone`` returning ``{"out": ...}``."""
    base = {
        "task": "segmentation",
        "output_dir": str(tmp_path / "run"),
        "model": {"factory": "test_models:TinySegNet", "kwargs": {"width": 8}},
        "teacher": {"arch": "fcn", "backbone": "resnet18", "output_stride": 8, "weights": str(fcn_teacher)},
    }
    point = {"name": "feat", "student": "body", "teacher": "backbone", "loss": "cwd"}
    bad = {**base, "distill": {"points": [{**point, "key": "out"}]}}
    msg = run_bad(
        ["train", str(write_config(tmp_path / "bad.yaml", bad)), *sum((["--set", s] for s in SMALL), [])], capsys
    )
    assert "student output of 'body' has no item 'out' (it is a tensor of shape" in msg and "student_key" in msg

    good = {**base, "distill": {"akd": {"num_avatars": 2}, "points": [{**point, "teacher_key": "out"}]}}
    assert train(write_config(tmp_path / "good.yaml", good), tmp_path / "run") == 0
    assert any(row.get("distill.feat", 0) > 0 for row in metric_rows(tmp_path / "run"))
    student = rebuild(tmp_path / "run" / "student.pt")
    assert type(student).__name__ == "TinySegNet"


# ------------------------------------------------------------------ segmentation_models_pytorch
def test_smp_unet_teacher_then_deeplabv3plus_student_through_the_cli(tmp_path):
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the 'smp' extra is not installed")
    assert train(EXAMPLES / "smp_unet_teacher.yaml", tmp_path / "teacher") == 0
    teacher = tmp_path / "teacher" / "student.pt"
    with pytest.warns(UserWarning, match=r"dropped levels \['encoder\.0'\]: the student's feature there carries no"):
        code = train(EXAMPLES / "smp_deeplabv3plus_akd.yaml", tmp_path / "akd", f"teacher.weights={teacher}")
    assert code == 0
    rows = metric_rows(tmp_path / "akd")
    distilled = {k for row in rows for k in row if k.startswith("distill.encoder")}
    assert distilled == {f"distill.encoder.{i}" for i in range(1, 6)}  # the input image (level 0) is not distilled
    student = rebuild(tmp_path / "akd" / "student.pt")
    assert isinstance(student, smp.DeepLabV3Plus) and student.segmentation_head[0].out_channels == 11


def test_smp_download_fails_fast_in_one_line_and_backbone_weights_reach_the_encoder(tmp_path, capsys):
    smp = pytest.importorskip("segmentation_models_pytorch", reason="the 'smp' extra is not installed")
    import huggingface_hub.constants as hub

    cfg = {"task": "segmentation", "model": {"factory": "segmentation_models_pytorch:Unet"}}
    offline_before = hub.HF_HUB_OFFLINE
    start = time.monotonic()
    msg = run_bad(["train", str(write_config(tmp_path / "c.yaml", cfg)), "--set", f"output_dir={tmp_path}/r"], capsys)
    assert time.monotonic() - start < 5
    assert "tried to download weights" in msg and "encoder_weights: null" in msg and "backbone_weights" in msg
    assert hub.HF_HUB_OFFLINE is offline_before and torch.hub.download_url_to_file.__module__ == "torch.hub"  # restored

    # an ImageNet file in torchvision's layout (fc included) into smp's encoder, by default and by name
    import torchvision

    resnet = torchvision.models.resnet18()
    torch.save(resnet.state_dict(), tmp_path / "resnet18.pth")
    for extra in ({}, {"backbone_module": "encoder"}):
        mcfg = validate(
            TrainConfig,
            {
                "task": "segmentation",
                "model": {
                    "factory": "segmentation_models_pytorch:Unet",
                    "kwargs": {"encoder_name": "resnet18", "encoder_weights": None},
                    "backbone_weights": str(tmp_path / "resnet18.pth"),
                    **extra,
                },
            },
        ).model
        model = build_from_factory(mcfg.factory, mcfg.kwargs, 3)
        assert isinstance(model, smp.Unet) and model.segmentation_head[0].out_channels == 3  # classes=3
        load_configured_weights(model, mcfg, "student")
        assert torch.equal(model.encoder.layer4[1].conv2.weight, resnet.layer4[1].conv2.weight)


# ------------------------------------------------------------------ Hugging Face
def test_segformer_student_of_a_builtin_teacher_through_the_cli(fcn_teacher, tmp_path, caplog):
    transformers = pytest.importorskip("transformers", reason="the 'hf' extra is not installed")
    caplog.set_level("INFO")
    assert train(EXAMPLES / "segformer_akd.yaml", tmp_path / "run", f"teacher.weights={fcn_teacher}") == 0
    assert "the data's 11 classes passed as num_labels" in caplog.text
    rows = metric_rows(tmp_path / "run")
    assert {"distill.feat", "distill.logits", "loss_ce"} <= {k for row in rows for k in row}
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())["metrics"]
    assert 0.0 <= metrics["miou"] <= 1.0  # evaluated from `logits` at 1/4, upsampled to the masks
    student = rebuild(tmp_path / "run" / "student.pt")
    assert isinstance(student, transformers.SegformerForSemanticSegmentation) and student.config.num_labels == 11


def test_wrong_output_key_is_one_line(tmp_path, capsys):
    pytest.importorskip("transformers", reason="the 'hf' extra is not installed")
    msg = run_bad(
        ["train", str(EXAMPLES / "segformer_akd.yaml"), "--set", "model.output_key=out", "--set", "distill=null"]
        + ["--set", "teacher=null", "--set", f"output_dir={tmp_path}/r", *sum((["--set", s] for s in SMALL), [])],
        capsys,
    )
    assert "holding them under 'out' (model.output_key)" in msg and "SemanticSegmenterOutput" not in msg


# ------------------------------------------------------------------ timm
def test_timm_backbone_in_a_builtin_head_example(fcn_teacher, tmp_path):
    pytest.importorskip("timm", reason="the 'timm' extra is not installed")
    assert train(EXAMPLES / "timm_backbone_akd.yaml", tmp_path / "run", f"teacher.weights={fcn_teacher}") == 0
    assert json.loads((tmp_path / "run" / "student.json").read_text())["rebuild"]["kwargs"]["backbone"] == (
        "timm:resnet10t"
    )
