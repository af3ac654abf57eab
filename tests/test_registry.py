"""One loss registry: config checks, builders and docs derive from it; labels reach the losses that need them."""

from __future__ import annotations

import json
import warnings
from pathlib import Path

import pytest
import torch
import yaml
from test_cli import MODELS, base_config, write_config

from avatarkd import LOSSES, ConfigError, DistillerConfig, build_points, register_loss
from avatarkd.cli import main
from avatarkd.config import validate
from avatarkd.errors import AvatarKDDeprecationWarning
from avatarkd.registry import Registry

CALLS: list[dict] = []


@register_loss("scaled_l2_for_tests", replace=True)
def scaled_l2(student: torch.Tensor, teacher: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """A user's own loss, declared beside its formula."""
    CALLS.append({"scale": scale, "shape": tuple(student.shape)})
    return scale * (student - teacher).pow(2).mean()


def _distill_config(task: str, data_root: Path, out: Path, teacher: Path, points: list[dict], **akd) -> dict:
    teacher_model, student_model = MODELS[task]
    cfg = base_config(task, data_root, out, student_model, steps=2)
    cfg["train"]["plots"] = False
    cfg["teacher"] = {**teacher_model, "weights": str(teacher)}
    cfg["distill"] = {"akd": {"num_avatars": 2, **akd}, "points": points}
    return cfg


def _distill_rows(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "distill_total" in r]


def test_registry_lists_every_builtin_loss_with_what_it_needs():
    assert {"mse", "cwd", "kd", "dkd", "pkd", "l1", "smooth_l1", "mgd", "maskd"} <= set(LOSSES.names())
    assert LOSSES.get("dkd").context == ("target",)
    assert LOSSES.get("mgd").channels and LOSSES.get("mgd").generator
    assert LOSSES.get("cwd").hyperparameters() == ["tau"] and LOSSES.get("cwd").defaults() == {"tau": 1.0}
    assert LOSSES.get("dkd").hyperparameters() == ["alpha", "beta", "tau"]
    assert LOSSES.get("mgd").hyperparameters() == ["alpha", "lambda_mgd"]
    assert all(LOSSES.get(n).summary for n in LOSSES.names())  # the docs table reads these
    with pytest.raises(ConfigError, match=r"unknown loss 'cdw'; did you mean 'cwd'\?"):
        LOSSES.get("cdw")


def test_registry_refuses_a_second_loss_of_the_same_name():
    with pytest.raises(ValueError, match="already registered"):
        register_loss("mse")(lambda s, t: (s - t).sum())
    reg: Registry[int] = Registry("thing")
    reg.add("a", 1)
    assert "a" in reg and len(reg) == 1 and list(reg) == ["a"]


def test_a_loss_registered_in_user_code_is_usable_from_a_yaml_point(data_root, untrained_teachers, tmp_path, capsys):
    points = [
        {
            "name": "feat",
            "student": "features",
            "teacher": "layer4",
            "loss": "scaled_l2_for_tests",
            "loss_kwargs": {"scale": 3.0},
        }
    ]
    cfg = _distill_config("classification", data_root, tmp_path / "run", untrained_teachers["classification"], points)
    CALLS.clear()
    assert main(["train", str(write_config(tmp_path / "c.yaml", **cfg))]) == 0
    assert CALLS and all(c["scale"] == 3.0 for c in CALLS)
    rows = _distill_rows(tmp_path / "run")
    assert rows and all(r["distill_total"] > 0 for r in rows)
    # and its hyperparameters are checked like a built-in's
    bad = yaml.safe_load("points: [{name: f, student: a, loss: scaled_l2_for_tests, loss_kwargs: {scael: 1}}]")
    with pytest.raises(ConfigError, match=r"unknown hyperparameter 'scael'; did you mean 'scale'\?; accepted: scale"):
        validate(DistillerConfig, bad)


def test_dkd_from_yaml_trains_a_classifier_through_the_cli(data_root, untrained_teachers, tmp_path):
    points = [
        {
            "name": "logits",
            "student": "classifier",
            "teacher": "fc",
            "loss": "dkd",
            "loss_kwargs": {"alpha": 1.0, "beta": 2.0, "tau": 2.0},
        }
    ]
    for akd in (True, False):
        out = tmp_path / f"dkd_{akd}"
        cfg = _distill_config(
            "classification", data_root, out, untrained_teachers["classification"], points, enabled=akd
        )
        assert main(["train", str(write_config(tmp_path / f"dkd_{akd}.yaml", **cfg))]) == 0
        rows = _distill_rows(out)
        assert len(rows) == 2 and all(r["distill.logits"] > 0 for r in rows)


def test_dkd_on_segmentation_logits_is_per_pixel(data_root, untrained_teachers, tmp_path):
    points = [{"name": "logits", "student": "", "teacher": "", "key": "out", "loss": "dkd"}]
    cfg = _distill_config("segmentation", data_root, tmp_path / "seg", untrained_teachers["segmentation"], points)
    assert main(["train", str(write_config(tmp_path / "seg.yaml", **cfg))]) == 0
    assert all(r["distill.logits"] > 0 for r in _distill_rows(tmp_path / "seg"))


def test_dkd_where_the_task_has_no_labels_is_refused_in_one_line(data_root, untrained_teachers, tmp_path, capsys):
    points = [{"name": "fpn", "student": "backbone.fpn", "teacher": "backbone.fpn", "loss": "dkd"}]
    cfg = _distill_config("detection", data_root, tmp_path / "det", untrained_teachers["detection"], points)
    capsys.readouterr()
    assert main(["train", str(write_config(tmp_path / "det.yaml", **cfg))]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "distill.points.0.loss: 'dkd' needs the batch's 'target'" in err
    assert "detection task does not provide" in err
    assert not (tmp_path / "det").exists()


@register_loss("renamed_l2_for_tests", renamed={"factor": "scale"}, replace=True)
def renamed_l2(student: torch.Tensor, teacher: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
    """A loss whose hyperparameter had another name: the old one keeps working, with a warning."""
    return scale * (student - teacher).pow(2).mean()


def test_an_old_hyperparameter_name_in_yaml_is_mapped_with_a_warning():
    line = "points: [{name: l, student: classifier, teacher: fc, loss: renamed_l2_for_tests, loss_kwargs: %s}]"
    with pytest.warns(AvatarKDDeprecationWarning, match="'factor' is deprecated, use 'scale'"):
        cfg = validate(DistillerConfig, yaml.safe_load(line % "{factor: 3.0}"))
    assert cfg.points[0].loss_kwargs == {"scale": 3.0}
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the builder sees the new name only: no second warning
        (point,) = build_points(cfg)
    assert point.loss.base_kwargs == {"scale": 3.0}
    with (
        pytest.raises(ConfigError, match="give 'scale' or its old name 'factor', not both"),
        pytest.warns(AvatarKDDeprecationWarning),
    ):
        validate(DistillerConfig, yaml.safe_load(line % "{factor: 3.0, scale: 2.0}"))
    # the built-in losses have no old names left: 'T' (before 'tau') is an unknown hyperparameter
    with pytest.raises(ConfigError, match="unknown hyperparameter 'T'"):
        validate(DistillerConfig, yaml.safe_load("points: [{name: l, student: a, loss: kd, loss_kwargs: {T: 3.0}}]"))


def test_distiller_names_the_missing_context():
    from torchvision.models import mobilenet_v3_small, resnet18

    from avatarkd import DistillationError, Distiller

    data = yaml.safe_load("points: [{name: logits, student: classifier, teacher: fc, loss: dkd}]")
    d = Distiller(
        mobilenet_v3_small(num_classes=3), resnet18(num_classes=3), build_points(validate(DistillerConfig, data))
    )
    x = torch.randn(2, 3, 32, 32)
    d.build(x)
    with pytest.raises(DistillationError, match=r"point 'logits': its loss needs \['target'\]"):
        d(x)
    _, losses = d(x, loss_context={"target": torch.tensor([0, 2]), "unused": 1})
    assert losses["distill.logits"] > 0
