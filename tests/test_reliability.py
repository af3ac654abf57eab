"""NaN loss handling and mixed precision on CPU."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from test_cli import MODELS, POINTS, base_config

from avatarkd.config import TrainConfig
from avatarkd.engine.checkpoint import list_checkpoints
from avatarkd.engine.trainer import NonFiniteLossError
from avatarkd.errors import AvatarKDError
from avatarkd.runner import build_trainer


def test_nan_loss_stops_with_the_step_and_keeps_the_last_good_state(data_root, tmp_path):
    cfg = base_config("classification", data_root, tmp_path / "run", MODELS["classification"][1], steps=5)
    cfg["train"].update(checkpoint_every=100, plots=False)
    trainer = build_trainer(TrainConfig.model_validate(cfg))
    real = trainer.task.losses

    def poisoned(model, batch):
        losses = real(model, batch)
        if trainer.step == 2:  # the third step goes bad
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return losses

    trainer.task.losses = poisoned
    with pytest.raises(
        NonFiniteLossError, match=r"loss is NaN/Inf at step 3; last good state saved to .*step_0000002\.pt"
    ):
        trainer.fit()
    ((step, path),) = list_checkpoints(tmp_path / "run")
    assert step == 2
    saved = torch.load(path, weights_only=False)["model"]
    assert all(torch.isfinite(v).all() for v in saved.values() if v.is_floating_point())
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


def test_bf16_autocast_on_cpu_keeps_distillation_losses_in_float32(data_root, untrained_teachers, tmp_path):
    teacher, student = MODELS["segmentation"]
    weights = untrained_teachers["segmentation"]
    cfg = base_config("segmentation", data_root, tmp_path / "run", student, steps=1)
    cfg["train"]["amp"] = "bf16"
    cfg["teacher"] = {**teacher, "weights": str(weights)}
    cfg["distill"] = {"akd": {"num_avatars": 2}, "points": POINTS["segmentation"]}
    trainer = build_trainer(TrainConfig.model_validate(cfg))
    batch = trainer.task.to_device(trainer.task.collate([trainer.train_set[i] for i in range(4)]), trainer.ctx.device)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        _, losses = trainer.distiller(batch[0])
    assert all(v.dtype == torch.float32 for v in losses.values())
    values = trainer.train_step(batch)
    assert torch.isfinite(values["loss"])
    with pytest.raises(AvatarKDError, match="^train.amp: fp16 needs a CUDA device; use bf16 on CPU$"):
        build_trainer(TrainConfig.model_validate({**cfg, "train": {**cfg["train"], "amp": "fp16"}}))


class OneClassClassifier(torch.nn.Module):
    """A collapsed model: every input gets class 0 (the symptom of stale BatchNorm statistics)."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        self.bias = torch.nn.Parameter(torch.arange(num_classes, 0, -1).float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bias.expand(x.shape[0], -1) + 0 * x.mean()


def test_a_model_that_predicts_one_class_is_flagged(data_root, tmp_path, caplog):
    cfg = base_config(
        "classification", data_root, tmp_path / "run", {"factory": "test_reliability:OneClassClassifier"}, steps=1
    )
    cfg["optim"]["lr"] = 1e-9
    cfg["train"]["plots"] = False
    with caplog.at_level(logging.WARNING, logger="avatarkd.engine.trainer"):
        result = build_trainer(TrainConfig.model_validate(cfg)).fit()
    assert result["metrics"]["predicted_classes"] == 1
    assert "predicts one class for every input" in caplog.text


def test_bn_momentum_reaches_every_batchnorm(data_root, tmp_path):
    model = {**MODELS["classification"][1], "bn_momentum": 0.1}
    trainer = build_trainer(TrainConfig.model_validate(base_config("classification", data_root, tmp_path / "r", model)))
    norms = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert norms and all(m.momentum == 0.1 for m in norms)  # torchvision's MobileNetV3 default is 0.01


def test_nan_between_checks_stops_at_the_next_check_with_the_first_bad_step(data_root, tmp_path):
    """Losses are checked every ``log_every`` steps: a NaN at step 3 is found at step 4 and the run
    rolls back to the state of the check before it (the start, step 0), which is saved."""
    cfg = base_config("classification", data_root, tmp_path / "run", MODELS["classification"][1], steps=5)
    cfg["train"].update(checkpoint_every=100, log_every=4, plots=False)
    trainer = build_trainer(TrainConfig.model_validate(cfg))
    start = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    real = trainer.task.losses

    def poisoned(model, batch):
        losses = real(model, batch)
        if trainer.step == 2:  # only the third step goes bad; the fourth is finite again
            losses["loss_ce"] = losses["loss_ce"] * float("nan")
        return losses

    trainer.task.losses = poisoned
    with pytest.raises(
        NonFiniteLossError, match=r"loss is NaN/Inf at step 3; last good state saved to .*step_0000000\.pt"
    ):
        trainer.fit()
    ((step, path),) = list_checkpoints(tmp_path / "run")
    assert step == 0 and trainer.step == 0
    saved = torch.load(path, weights_only=False)["model"]
    assert all(torch.equal(saved[k], v) for k, v in start.items())
    assert all(torch.equal(saved[k], v) for k, v in trainer.model.state_dict().items())


@pytest.mark.parametrize("task", ["classification", "segmentation", "detection"])
def test_a_training_step_never_waits_for_the_device_in_avatarkd_code(task, data_root, tmp_path):
    """No tensor-to-Python conversion (``.item()``, ``bool()``, ``float()``: aten._local_scalar_dense,
    a host sync on a GPU) is made by avatarkd code during a distilled training step with AKD. Calls
    inside torch or torchvision (e.g. a CPU optimizer's step counters) are not ours to remove."""
    import traceback

    from torch.utils._python_dispatch import TorchDispatchMode

    package = str(Path(__file__).resolve().parent.parent / "avatarkd")

    class Conversions(TorchDispatchMode):
        machinery = ("torch/_compile.py", "torch/_dynamo/", "torch/utils/_python_dispatch.py")

        def __init__(self) -> None:
            super().__init__()
            self.ours: list[str] = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            if func is torch.ops.aten._local_scalar_dense.default:
                frames = traceback.extract_stack()[:-1]  # without this method
                while frames and any(m in frames[-1].filename for m in self.machinery):
                    frames.pop()  # the dispatch mode's own wrappers
                if frames and frames[-1].filename.startswith(package):  # called by avatarkd itself
                    self.ours.append(f"{frames[-1].filename}:{frames[-1].lineno}")
            return func(*args, **(kwargs or {}))

    teacher, student = MODELS[task]
    weights = tmp_path / "teacher.pt"
    torch.save(
        build_trainer(
            TrainConfig.model_validate(base_config(task, data_root, tmp_path / "t", teacher))
        ).model.state_dict(),
        weights,
    )
    cfg = base_config(task, data_root, tmp_path / "run", student, steps=3)
    cfg["teacher"] = {**teacher, "weights": str(weights)}
    cfg["distill"] = {"akd": {"num_avatars": 2}, "points": POINTS[task]}
    trainer = build_trainer(TrainConfig.model_validate(cfg))
    batch = trainer.task.to_device(trainer.task.collate([trainer.train_set[i] for i in range(4)]), trainer.ctx.device)
    trainer.train_step(batch)  # first step: running estimates, connectors' lazy state
    with Conversions() as seen:
        for _ in range(2):
            trainer.train_step(batch)
    assert seen.ours == []
