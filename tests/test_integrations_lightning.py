"""avatarkd.integrations.lightning: the example script trains two steps; the checkpoint has no teacher and
restores without an example batch; the teacher stays frozen in eval mode."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
import torch

try:
    import pytorch_lightning  # noqa: F401
except ImportError:  # the unified `lightning` package serves as well
    pytest.importorskip("lightning", reason="the 'lightning' extra (pytorch-lightning) is not installed")

from avatarkd.integrations.lightning import TEACHER_PREFIX, AvatarKDModule, pl
from avatarkd.models import build_segmenter

EXAMPLE = Path(__file__).resolve().parent.parent / "examples" / "lightning_akd.py"


def _example():
    spec = importlib.util.spec_from_file_location("lightning_akd_example", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_lightning_example_trains_and_its_checkpoint_restores_without_teacher_or_example_batch(tmp_path):
    example = _example()
    teacher_file = tmp_path / "teacher.pt"
    torch.save(build_segmenter("fcn", "resnet18", 11, 8).state_dict(), teacher_file)
    argv = ["--teacher-weights", str(teacher_file), "--output-dir", str(tmp_path / "run")]
    ckpt_path = example.main([*argv, "--steps", "2", "--batch-size", "4", "--limit", "8"])

    ckpt = torch.load(ckpt_path, weights_only=False, map_location="cpu")
    keys = list(ckpt["state_dict"])
    assert keys and not any(k.startswith(TEACHER_PREFIX) for k in keys)
    assert any(k.startswith("distiller.student.") for k in keys)
    assert any(k.startswith("distiller.connectors.") for k in keys)  # 576 -> 512 channels: a connector
    assert ckpt["hyper_parameters"]["points"] == example.POINTS

    student, teacher = example.build_models(11, teacher_file)
    restored = AvatarKDModule.load_from_checkpoint(ckpt_path, student=student, teacher=teacher)
    trained = torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    assert all(torch.equal(restored.student.state_dict()[k], v) for k, v in trained.items())
    assert not restored.teacher.training and not any(p.requires_grad for p in restored.teacher.parameters())
    assert torch.equal(
        restored.teacher.state_dict()["classifier.4.weight"], teacher.state_dict()["classifier.4.weight"]
    )

    # the teacher stays frozen through fit (Lightning switches modes around validation too) and
    # the restored module trains on: a resumed fit
    seen = []
    restored.teacher.register_forward_pre_hook(lambda m, _: seen.append(m.training))
    images, masks = torch.rand(4, 3, 64, 64), torch.randint(0, 11, (4, 64, 64))
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(images, masks), batch_size=2)
    trainer = pl.Trainer(
        max_steps=2,
        limit_val_batches=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        default_root_dir=tmp_path,
    )
    trainer.fit(restored, loader, loader)
    assert seen and not any(seen)
    assert not any(p.requires_grad for p in restored.teacher.parameters())
