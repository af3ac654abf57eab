"""Declarative distiller configs: valid YAML builds points; bad YAML fails with one line."""

import pytest
import torch
import yaml

from avatarkd import AvatarLoss, ConfigError, Distiller, DistillerConfig, build_points
from avatarkd.config import apply_overrides, load_yaml, validate

GOOD = """
akd: {num_avatars: 4, p: 0.1, uncertainty: variance}
points:
  - {name: feat, student: features, teacher: layer4, loss: cwd, loss_kwargs: {tau: 2.0}, weight: 2.0}
  - {name: gen, student: features, teacher: layer4, loss: mgd, loss_kwargs: {alpha: 1.0e-3}}
  - {name: logits, student: classifier, teacher: fc, loss: kd, akd: {enabled: false}}
"""


def test_good_config_builds_a_working_distiller(tmp_path):
    from torchvision.models import mobilenet_v3_small, resnet18

    path = tmp_path / "d.yaml"
    path.write_text(GOOD)
    cfg = validate(DistillerConfig, load_yaml(path))
    points = build_points(cfg, torch.Generator().manual_seed(0))
    assert points[0].loss.num_avatars == 4 and points[0].loss.base_kwargs == {"tau": 2.0}
    assert points[2].loss.num_avatars == 1 and points[2].loss.uncertainty.mode == "none"
    d = Distiller(mobilenet_v3_small(num_classes=3), resnet18(num_classes=3), points).build(torch.randn(2, 3, 32, 32))
    assert isinstance(d.loss_modules["gen"], AvatarLoss)
    _, losses = d(torch.randn(2, 3, 32, 32))
    assert set(losses) == {"distill.feat", "distill.gen", "distill.logits", "distill_total"}


@pytest.mark.parametrize(
    "mutate,match",
    [
        (lambda c: c["points"][0].update(lose="cwd"), r"points\.0\.lose: unknown key; did you mean 'loss'\?"),
        (lambda c: c["points"][0].update(loss="cdw"), r"points\.0\.loss: Input should be"),
        (lambda c: c["points"][0].update(loss_kwargs={"temp": 1}), r"unknown hyperparameter 'temp'; accepted: tau"),
        (lambda c: c["points"][1].update(loss_kwargs={"beta": 1}), r"loss 'mgd' got an unknown hyperparameter 'beta'"),
        (lambda c: c["akd"].update(num_avatars="four"), r"akd\.num_avatars: .*integer.*\(got 'four'\)"),
        (lambda c: c["akd"].update(p=1.5), r"drop probability p must be < 1"),
        (lambda c: c["akd"].update(uncertanity="none"), r"akd\.uncertanity: unknown key; did you mean 'uncertainty'"),
        (lambda c: c.update(points=[]), r"points: List should have at least 1 item"),
        (lambda c: c["points"][2].update(name="feat"), r"unique; repeated: \['feat'\]"),
    ],
)
def test_bad_configs_give_one_readable_line(mutate, match):
    data = yaml.safe_load(GOOD)
    mutate(data)
    with pytest.raises(ConfigError, match=match) as info:
        validate(DistillerConfig, data, "d.yaml")
    assert "\n" not in str(info.value)


def test_malformed_yaml_and_missing_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("points: [\n  - {name: a\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: malformed YAML at line \d+"):
        load_yaml(bad)
    with pytest.raises(ConfigError, match="config file not found"):
        load_yaml(tmp_path / "nope.yaml")
    scalar = tmp_path / "s.yaml"
    scalar.write_text("3\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        load_yaml(scalar)


def test_overrides():
    data = yaml.safe_load(GOOD)
    apply_overrides(data, ["akd.num_avatars=8", "points.0.weight=0.5", "akd.uncertainty=none"])
    cfg = validate(DistillerConfig, data)
    assert cfg.akd.num_avatars == 8 and cfg.points[0].weight == 0.5 and cfg.akd.uncertainty == "none"
    with pytest.raises(ConfigError, match="not of the form"):
        apply_overrides(data, ["akd.num_avatars"])
    with pytest.raises(ConfigError, match="no list item '9'"):
        apply_overrides(data, ["points.9.weight=1"])


def test_short_exponent_floats_are_floats_not_strings(tmp_path):
    # PyYAML alone reads "2e-5" as the string "2e-5"; it would reach MGD as its loss scale.
    from avatarkd.config import apply_overrides, load_yaml

    path = tmp_path / "c.yaml"
    path.write_text("alpha: 2e-5\nlr: 1.0e-3\nsteps: 10\nname: '2e-5'\nbig: 1E+3\n")
    assert load_yaml(path) == {"alpha": 2e-5, "lr": 1e-3, "steps": 10, "name": "2e-5", "big": 1000.0}
    data = apply_overrides({}, ["distill.points=[{name: f, student: a, loss: mgd, loss_kwargs: {alpha: 2e-05}}]"])
    assert data["distill"]["points"][0]["loss_kwargs"]["alpha"] == 2e-5
    assert isinstance(data["distill"]["points"][0]["loss_kwargs"]["alpha"], float)
