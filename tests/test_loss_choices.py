"""Every base loss that applies to a task builds from config and takes a training step, AKD on and off."""

from __future__ import annotations

import pytest
import torch
from test_cli import MODELS, base_config

from avatarkd.config import TrainConfig
from avatarkd.runner import build_trainer

FEATURE_POINT = {
    "segmentation": {"name": "feat", "student": "backbone.body", "teacher": "backbone", "key": "out"},
    "detection": {"name": "fpn", "student": "backbone.fpn", "teacher": "backbone.fpn"},
    # stride 8 on the 16 px crops: a 2x2 map (the last stage's 1x1 map would make CWD exactly 0)
    "classification": {"name": "feat", "student": "features.3", "teacher": "layer2"},
}
LOGIT_POINT = {
    "segmentation": {"name": "logits", "student": "", "teacher": "", "key": "out"},
    "classification": {"name": "logits", "student": "classifier", "teacher": "fc"},
}
CASES = [(task, loss, True) for task in FEATURE_POINT for loss in ("mse", "cwd", "mgd", "pkd", "maskd")]
CASES += [(task, "kd", True) for task in LOGIT_POINT]
CASES += [(task, "mse", False) for task in FEATURE_POINT]  # the one switch turns AKD off


@pytest.mark.parametrize("task,loss,akd", CASES, ids=[f"{t}-{name}-{'akd' if a else 'base'}" for t, name, a in CASES])
def test_loss_choice_trains_one_step(task, loss, akd, data_root, untrained_teachers, tmp_path):
    teacher, student = MODELS[task]
    cfg = base_config(task, data_root, tmp_path / "run", student, steps=1)
    cfg["teacher"] = {**teacher, "weights": str(untrained_teachers[task])}
    point = LOGIT_POINT[task] if loss == "kd" else FEATURE_POINT[task]
    cfg["distill"] = {"akd": {"enabled": akd, "num_avatars": 2}, "points": [{**point, "loss": loss}]}
    trainer = build_trainer(TrainConfig.model_validate(cfg))
    batch = trainer.task.to_device(trainer.task.collate([trainer.train_set[i] for i in range(4)]), trainer.ctx.device)
    # the distillation term alone moves the student: it is non-zero and has a gradient
    trainer.train_module.train()
    losses = trainer.task.distill_losses(trainer.train_module, batch)
    assert losses["distill_total"] > 0
    student = [p for p in trainer.model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(losses["distill_total"], student, allow_unused=True)
    assert any(g is not None and bool(g.abs().sum() > 0) for g in grads), "distillation does not reach the student"
    before = [p.detach().clone() for p in trainer.distiller.trainable_parameters()]
    values = trainer.train_step(batch)
    assert torch.isfinite(values["distill_total"]) and values["distill_total"] > 0
    after = trainer.distiller.trainable_parameters()
    assert any(not torch.equal(a, b) for a, b in zip(before, after, strict=True))
    modules = list(trainer.distiller.loss_modules.values())
    assert all(m.num_avatars == (2 if akd else 1) for m in modules)
    assert all(m.uncertainty.mode == ("relative" if akd else "none") for m in modules)
