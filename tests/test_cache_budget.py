"""The teacher cache stays within its budget, can store float16, and says at the start what it will cost."""

from __future__ import annotations

import json
import logging
import re
from pathlib import Path

import pytest
import torch
from test_cli import MODELS, base_config
from test_teacher_cache import _config, _distiller, _random_teacher
from tiny_data import write_config, write_tiny_dataset

from avatarkd.config import TrainConfig, load_config
from avatarkd.distiller import TeacherCache
from avatarkd.distiller.teacher_cache import expected_use
from avatarkd.models import build_classifier
from avatarkd.runner import build_trainer, train


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=4)


def files_bytes(root: Path) -> int:
    return sum(p.stat().st_size for p in root.rglob("*") if p.is_file())


def blocks_bytes(root: Path, block: int = 4096) -> int:
    """Files in whole blocks and a block per folder: roughly what ``du`` says."""
    return sum(-(-p.stat().st_size // block) * block if p.is_file() else block for p in root.rglob("*"))


def test_a_budget_smaller_than_one_epoch_keeps_the_cache_within_it(data_root, tmp_path, caplog):
    teacher = _random_teacher("segmentation", data_root, tmp_path)
    cfg = _config("segmentation", data_root, tmp_path, "run", teacher, tmp_path / "cache")
    budget = 100_000  # an entry is ~33 KB here (512 x 4 x 4 float32): 8 samples need ~4x the budget
    cfg["distill"]["teacher_cache_max_gb"] = budget / 1e9
    with caplog.at_level(logging.INFO, logger="avatarkd"):
        result = train(load_config(write_config(tmp_path / "run.yaml", cfg)))
    stats = result["teacher_cache"]
    assert stats["written"] >= 1 and stats["not_written"] >= 1
    assert files_bytes(tmp_path / "cache") <= blocks_bytes(tmp_path / "cache") <= budget
    assert len(list((tmp_path / "cache").rglob("*.pt"))) == stats["written"]
    assert f"teacher cache: {stats['not_written']} entries were not written" in caplog.text
    assert "is full (distill.teacher_cache_max_gb: 0.0001 GB)" in caplog.text
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["teacher_cache"] == stats
    # the estimate at the start: fixed data (no flips in this setup), 8 entries, 2 epochs, the second read back
    assert re.search(r"teacher cache estimate: [\d.]+ MB per sample \(float32\), 8 entries over this run", caplog.text)
    assert "expected hit rate 50%" in caplog.text


def test_float16_entries_halve_the_disk_and_are_never_read_as_float32(tmp_path):
    x = torch.randn(4, 3, 32, 32)  # entries of 24 KB in float32: the payload, not the file format, dominates
    d32, _ = _distiller(None)
    d32.teacher_cache = TeacherCache(tmp_path, d32.teacher)
    d16, calls = _distiller(None)
    d16.teacher_cache = TeacherCache(tmp_path, d16.teacher, dtype=torch.float16)
    assert d16.teacher_cache.dir != d32.teacher_cache.dir  # the storage dtype is part of the fingerprint
    want = d32(x)[1]["distill_total"]
    d16(x)
    got = d16(x)[1]["distill_total"]  # read back from float16 entries
    assert calls == [4] and d16.teacher_cache.hits == 4
    entry = torch.load(next(d16.teacher_cache.dir.rglob("*.pt")), weights_only=True)
    assert all(t.dtype == torch.float16 for t in entry.values())
    torch.testing.assert_close(got, want, rtol=2e-3, atol=0)
    assert files_bytes(d16.teacher_cache.dir) < 0.75 * files_bytes(d32.teacher_cache.dir)


def test_expected_use_follows_the_augmentation():
    assert expected_use(100, 300, 1) == (100, pytest.approx(2 / 3))  # fixed data: the first epoch misses
    entries, hit = expected_use(100, 300, 2)  # flips: 2 variants, 3 draws each
    assert entries == 175 and hit == pytest.approx(1 - 1.75 / 3)
    assert expected_use(100, 300, None) == (300, 0.0)  # every draw new
    assert expected_use(100, 50, 1) == (50, 0.0)  # not even one epoch


def test_random_crops_warn_that_the_cache_never_hits(data_root, tmp_path, caplog):
    teacher_model, student_model = MODELS["classification"]
    teacher_file = tmp_path / "teacher.pt"
    torch.save(build_classifier("resnet18", 2).state_dict(), teacher_file)
    cfg = base_config("classification", data_root, tmp_path / "run", student_model, steps=4)
    cfg["data"]["crop_size"] = 12  # random-resized crops: every draw is a new input
    cfg["teacher"] = {**teacher_model, "weights": str(teacher_file)}
    cfg["distill"] = {
        "teacher_cache": str(tmp_path / "cache"),
        "points": [{"name": "logits", "student": "classifier", "teacher": "fc", "loss": "kd"}],
    }
    with caplog.at_level(logging.INFO, logger="avatarkd"):
        build_trainer(TrainConfig.model_validate(cfg))
    assert "16 entries over this run" in caplog.text and "expected hit rate 0%" in caplog.text
    assert "new input at every draw" in caplog.text and "remove distill.teacher_cache" in caplog.text
