"""MasKD as published: stage 1 (``maskd-tokens``) learns tokens on the frozen teacher, stage 2 loads them frozen."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import reference as R
import torch
from test_cli import MODELS, base_config
from tiny_data import write_config, write_tiny_dataset

from avatarkd.cli import main
from avatarkd.config import TrainConfig, load_config, validate
from avatarkd.losses.maskd import TOKENS_FORMAT, MasKD, ReceptiveTokens, dice_coefficient, maskd_published_loss
from avatarkd.maskd_tokens import train_tokens
from avatarkd.tasks import make_task


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


def test_dice_penalty_matches_float64_reference():
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(2, 4, 5, 6, generator=g)
    assert rel_err(dice_coefficient(masks).item(), R.dice_penalty(masks.double().numpy())) < 1e-5
    same = torch.rand(1, 1, 5, 6, generator=g).expand(1, 3, 5, 6)
    assert dice_coefficient(same).item() == pytest.approx(1.0, rel=1e-6)  # identical masks: no diversity


def test_published_loss_matches_float64_reference():
    g = torch.Generator().manual_seed(1)
    s, t = torch.randn(2, 3, 4, 5, generator=g), torch.randn(2, 3, 4, 5, generator=g)
    masks = torch.rand(2, 4, 4, 5, generator=g)
    weights = torch.softmax(torch.randn(2, 4, generator=g), 1)
    want = R.maskd_published(*(x.double().numpy() for x in (s, t, masks, weights)))
    assert rel_err(maskd_published_loss(s, t, masks, weights).item(), want) < 1e-5


def _tokens_file(path: Path, channels: dict[str, int], num_tokens: int = 3) -> Path:
    torch.manual_seed(0)
    levels = {label: ReceptiveTokens(c, num_tokens).to_file() for label, c in channels.items()}
    torch.save({"format": TOKENS_FORMAT, "points": ["p"], "levels": levels}, path)
    return path


def test_stage2_module_uses_frozen_tokens_per_image_weights_and_the_student_mask_after_warmup(tmp_path):
    file = _tokens_file(tmp_path / "tok.pt", {"p": 4})
    loss = MasKD(4, tokens=str(file), warmup_steps=2, label="p").train()
    parts = ReceptiveTokens.from_file(torch.load(file, weights_only=True)["levels"]["p"])
    assert not any(p.requires_grad for p in loss.parameters())
    g = torch.Generator().manual_seed(2)
    s, t = torch.randn(2, 4, 3, 3, generator=g), torch.randn(2, 4, 3, 3, generator=g)
    with torch.no_grad():
        before = maskd_published_loss(s, t, parts.masks(t), parts.weights(t))
        after = maskd_published_loss(s, t, parts.masks(t) * parts.masks(s), parts.weights(t))
    assert not torch.allclose(before, after)
    got = [loss(s, t) for _ in range(3)]
    torch.testing.assert_close(got[0], before)
    torch.testing.assert_close(got[1], before)
    torch.testing.assert_close(got[2], after)  # step 2 >= warmup_steps
    assert int(loss.step) == 3 and "step" in loss.state_dict()
    loss.eval()
    loss(s, t)
    assert int(loss.step) == 3  # only training steps count


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_maskd"), n_train=4, n_val=2)


def _config(task: str, data_root: Path, tmp_path: Path, point: dict, steps: int = 2) -> dict:
    teacher_model, student_model = MODELS[task]
    raw = base_config(task, data_root, tmp_path / "run", teacher_model, steps=steps)
    raw["train"].update(plots=False, checkpoint_every=steps)
    plain = validate(TrainConfig, raw)
    model_task = make_task(plain)
    model_task.datasets(plain.data)
    torch.manual_seed(0)
    torch.save(model_task.build_model(plain.model).state_dict(), tmp_path / "teacher.pt")
    raw["model"] = dict(student_model)
    raw["teacher"] = {**teacher_model, "weights": str(tmp_path / "teacher.pt")}
    raw["distill"] = {"akd": {"num_avatars": 2}, "points": [point]}
    return raw


def test_stage1_lowers_its_loss_on_tiny_data(data_root, tmp_path):
    point = {"name": "feat", "student": "backbone.body", "teacher": "backbone", "key": "out", "loss": "maskd"}
    raw = _config("segmentation", data_root, tmp_path, {**point, "loss_kwargs": {"num_tokens": 3}})
    cfg = load_config(write_config(tmp_path / "seg.yaml", raw))
    result = train_tokens(cfg, tmp_path / "tok.pt", steps=8, lr=1e-2, show_progress=False)
    history = result["history"]  # the same 4 training images, reshuffled: the loss falls steadily (2.1 -> 1.6)
    assert sum(history[-3:]) / 3 < 0.9 * sum(history[:3]) / 3, history
    data = torch.load(tmp_path / "tok.pt", weights_only=True)
    (entry,) = data["levels"].values()
    assert list(data["levels"]) == ["feat"] and entry["channels"] == 512 and entry["num_tokens"] == 3
    assert entry["tokens"].shape == (3, 512)


def test_maskd_tokens_then_maskd_akd_student_end_to_end_through_the_cli(data_root, tmp_path, capsys):
    point = {"name": "fpn", "student": "backbone.fpn", "teacher": "backbone.fpn", "loss": "maskd"}
    raw = _config("detection", data_root, tmp_path, {**point, "loss_kwargs": {"num_tokens": 2}})
    stage1 = write_config(tmp_path / "stage1.yaml", raw)
    tokens = tmp_path / "fpn_tokens.pt"
    assert main(["maskd-tokens", str(stage1), "--out", str(tokens), "--steps", "2"]) == 0
    assert "wrote" in capsys.readouterr().out
    saved = torch.load(tokens, weights_only=True)
    assert sorted(saved["levels"]) == [f"fpn.{k}" for k in ("0", "1", "2", "p6", "p7")]
    raw["distill"]["points"][0]["loss_kwargs"] = {"num_tokens": 2, "tokens": str(tokens), "warmup_steps": 1}
    stage2 = write_config(tmp_path / "stage2.yaml", raw)
    assert main(["train", str(stage2)]) == 0
    ckpt = torch.load(sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1], weights_only=False)
    state = ckpt["distill"]
    for label, entry in saved["levels"].items():
        slot = label.replace(".", "_")
        torch.testing.assert_close(state[f"loss_modules.{slot}.base.receptive.tokens"], entry["tokens"], rtol=0, atol=0)
        for key, value in entry["predictor"].items():
            got = state[f"loss_modules.{slot}.base.receptive.predictor.{key}"]
            torch.testing.assert_close(got, value, rtol=0, atol=0)
        assert int(state[f"loss_modules.{slot}.base.step"]) == 2


def test_a_tokens_file_for_other_channels_is_one_line_and_exit_2(data_root, tmp_path, capsys):
    levels = {f"fpn.{k}": 16 for k in ("0", "1", "2", "p6", "p7")}  # the teacher's FPN has 32 channels
    tokens = _tokens_file(tmp_path / "other.pt", levels)
    point = {"name": "fpn", "student": "backbone.fpn", "teacher": "backbone.fpn", "loss": "maskd"}
    raw = _config("detection", data_root, tmp_path, {**point, "loss_kwargs": {"tokens": str(tokens)}})
    assert main(["train", str(write_config(tmp_path / "bad.yaml", raw))]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarkd: error: maskd tokens file") and "16 channels" in err and "\n" not in err


@pytest.mark.parametrize(
    "task, point, message",
    [
        (
            "detection",
            {"name": "fpn", "student": "backbone.fpn", "loss": "mse"},
            "no distillation point with loss: maskd",
        ),
        (
            "classification",
            {"name": "logits", "student": "classifier", "teacher": "fc", "loss": "maskd"},
            "not an (N, C, H, W) feature map",
        ),
    ],
)
def test_maskd_tokens_refuses_in_one_line(task, point, message, data_root, tmp_path, capsys):
    config = write_config(tmp_path / "c.yaml", _config(task, data_root, tmp_path, point))
    assert main(["maskd-tokens", str(config), "--out", str(tmp_path / "t.pt"), "--steps", "1"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarkd: error: maskd-tokens:") and message in err and "\n" not in err
    assert not (tmp_path / "t.pt").exists()


def test_a_point_the_task_loss_does_not_read_is_refused():
    from types import SimpleNamespace

    from avatarkd.config import PointConfig
    from avatarkd.errors import ConfigError
    from avatarkd.maskd_tokens import _check_driven

    x, other = torch.ones(1, 2, 2, 2, requires_grad=True), torch.ones(1, requires_grad=True)
    hook = SimpleNamespace(outputs={"p6": x * 2})
    point = PointConfig(name="p", student="neck", loss="maskd")
    with pytest.raises(ConfigError, match="does not depend on the output of 'neck'.p6"):
        _check_driven((other * 3).sum(), [hook], [point])  # type: ignore[list-item]
    _check_driven(hook.outputs["p6"].sum(), [hook], [point])  # type: ignore[list-item]


def test_without_a_tokens_file_the_log_says_it_is_the_simplified_form(monkeypatch, caplog):
    import avatarkd.losses.maskd as maskd_module

    monkeypatch.setattr(maskd_module, "_told_simplified", False)
    with caplog.at_level(logging.INFO, logger="avatarkd.losses.maskd"):
        first, second = MasKD(4), MasKD(4)
    lines = [r.getMessage() for r in caplog.records if "simplified form" in r.getMessage()]
    assert len(lines) == 1  # once, not once per FPN level
    assert first.receptive is None and first.tokens.requires_grad and second.tokens.requires_grad
