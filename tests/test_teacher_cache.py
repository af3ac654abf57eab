"""Teacher features cached on disk: same losses as running the teacher, and the teacher does not run on a hit."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from test_cli import base_config, write_config
from torch import nn

from avatarkd import AvatarLoss, Distiller, DistillPoint
from avatarkd import losses as L
from avatarkd.config import TrainConfig, load_config
from avatarkd.distiller import TeacherCache, build_points
from avatarkd.runner import train
from avatarkd.tasks import make_task


def _conv_pair() -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    student = nn.Sequential(nn.Conv2d(3, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 6, 3, padding=1))
    teacher = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 6, 3, padding=1))
    teacher[1].running_mean.normal_()  # eval-mode BN with non-trivial statistics
    return student, teacher


def _distiller(cache: TeacherCache | None) -> tuple[Distiller, list[int]]:
    student, teacher = _conv_pair()
    calls: list[int] = []
    teacher.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    points = [DistillPoint("mid", "2", "3", loss=AvatarLoss(L.mse, num_avatars=1, p=0.0, uncertainty="none"))]
    d = Distiller(student, teacher, points, teacher_cache=cache).build(torch.randn(2, 3, 8, 8))
    calls.clear()
    return d, calls


def test_cache_hit_skips_the_teacher_and_gives_the_same_loss(tmp_path):
    x = torch.randn(4, 3, 8, 8)
    plain, plain_calls = _distiller(None)
    cached, calls = _distiller(None)
    cached.teacher_cache = TeacherCache(tmp_path, cached.teacher)
    want = plain(x)[1]["distill_total"]
    first = cached(x)[1]["distill_total"]
    assert calls == [4] and cached.teacher_cache.misses == 4
    # a batch in another order and composition is served sample by sample from disk
    second = cached(torch.cat([x[2:], x[:2]]))[1]["distill_total"]
    third = cached(x[1:3])[1]["distill_total"]
    assert calls == [4], "the teacher ran although every sample was cached"
    assert cached.teacher_cache.hits == 6
    torch.testing.assert_close(first, want, rtol=1e-6, atol=0)
    torch.testing.assert_close(second, want, rtol=1e-5, atol=0)
    torch.testing.assert_close(third, plain(x[1:3])[1]["distill_total"], rtol=1e-5, atol=0)
    assert plain_calls == [4, 2]


def test_changed_input_or_teacher_is_a_miss(tmp_path):
    d, calls = _distiller(None)
    d.teacher_cache = TeacherCache(tmp_path, d.teacher)
    x = torch.randn(2, 3, 8, 8)
    d(x)
    d(x.flip(-1))  # an augmented image is different content
    assert calls == [2, 2]
    before = d.teacher_cache.dir
    with torch.no_grad():
        d.teacher[0].weight.add_(1.0)
    assert TeacherCache(tmp_path, d.teacher).dir != before, "changed weights must not read the old features"
    assert TeacherCache(tmp_path, d.teacher, ["other point"]).dir != TeacherCache(tmp_path, d.teacher).dir


def test_detection_style_lists_key_on_the_padded_batch_size():
    a, b, big = torch.rand(3, 8, 8), torch.rand(3, 8, 8), torch.rand(3, 8, 12)
    same = TeacherCache.sample_keys(([a, b],))
    padded = TeacherCache.sample_keys(([a, big],))
    assert same is not None and padded is not None
    assert same[0] != padded[0], "a sample padded to another size sees other features"
    assert TeacherCache.sample_keys(([a, b],)) == same
    assert TeacherCache.sample_keys((a, b)) is None and TeacherCache.sample_keys(("text",)) is None


def test_unreadable_entry_is_recomputed_with_a_warning(tmp_path, caplog):
    d, calls = _distiller(None)
    d.teacher_cache = TeacherCache(tmp_path, d.teacher)
    x = torch.randn(2, 3, 8, 8)
    want = d(x)[1]["distill_total"]
    for f in d.teacher_cache.dir.rglob("*.pt"):
        f.write_bytes(b"torn")
    with caplog.at_level(logging.WARNING):
        got = d(x)[1]["distill_total"]
    assert calls == [2, 2]
    assert "unreadable teacher-cache entry" in caplog.text
    torch.testing.assert_close(got, want)
    assert not list(d.teacher_cache.dir.rglob("*.tmp"))


SETUPS = {
    "segmentation": (
        {"arch": "lraspp", "backbone": "mobilenet_v3_small"},
        {"arch": "fcn", "backbone": "resnet18"},
        [{"name": "feat", "student": "backbone.body", "teacher": "backbone", "key": "out", "loss": "cwd"}],
        "distill.feat",
    ),
    "detection": (
        {
            "arch": "retinanet",
            "backbone": "resnet18",
            "fpn_channels": 32,
            "image_size": 64,
            "anchor_sizes": [8, 16, 32, 64, 128],
        },
        {
            "arch": "retinanet",
            "backbone": "resnet34",
            "fpn_channels": 32,
            "image_size": 64,
            "anchor_sizes": [8, 16, 32, 64, 128],
        },
        [{"name": "fpn", "student": "backbone.fpn", "teacher": "backbone.fpn", "loss": "cwd"}],
        "distill.fpn.0",
    ),
}


def _config(task: str, data_root: Path, tmp: Path, out: str, teacher: Path, cache: Path | None) -> dict:
    student, teacher_model, points, _ = SETUPS[task]
    cfg = base_config(task, data_root, tmp / out, student, steps=4)
    cfg["data"].update(hflip=0.0, limit_train=8, limit_val=4)
    cfg["train"]["plots"] = False
    cfg["teacher"] = {**teacher_model, "weights": str(teacher)}
    cfg["distill"] = {"akd": {"num_avatars": 2}, "teacher_cache": str(cache) if cache else None, "points": points}
    return cfg


def _run(task: str, data_root: Path, tmp: Path, out: str, teacher: Path, cache: Path | None) -> dict:
    return train(load_config(write_config(tmp / f"{out}.yaml", **_config(task, data_root, tmp, out, teacher, cache))))


def _random_teacher(task: str, data_root: Path, tmp: Path) -> Path:
    torch.manual_seed(0)
    cfg = TrainConfig.model_validate(_config(task, data_root, tmp, "t", tmp / "none.pt", None))
    t = make_task(cfg)
    t.datasets(cfg.data)
    path = tmp / f"{task}_teacher.pt"
    torch.save(t.build_model(cfg.teacher).state_dict(), path)
    return path


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_training_with_the_cache_matches_training_without(task, data_root, tmp_path):
    teacher = _random_teacher(task, data_root, tmp_path)
    plain = _run(task, data_root, tmp_path, "plain", teacher, None)
    cached = _run(task, data_root, tmp_path, "cached", teacher, tmp_path / "cache")
    # 8 samples, batch 4, 4 steps: epoch 1 fills the cache, epoch 2 reads it
    assert cached["teacher_cache"] == {
        "hits": 8,
        "misses": 8,
        "hit_rate": pytest.approx(0.5, abs=1e-4),
        "written": 8,
        "not_written": 0,
    }
    assert "teacher_cache" not in plain
    key = SETUPS[task][3]

    def losses(run: str) -> list[float]:
        rows = [json.loads(line) for line in (tmp_path / run / "metrics.jsonl").read_text().splitlines()]
        return [r[key] for r in rows if key in r]

    a, b = losses("plain"), losses("cached")
    assert len(a) == len(b) == 4
    torch.testing.assert_close(torch.tensor(b), torch.tensor(a), rtol=1e-4, atol=0)
    # a second run reuses the first run's cache from its first step
    again = _run(task, data_root, tmp_path, "again", teacher, tmp_path / "cache")
    assert again["teacher_cache"]["misses"] == 0


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_backbone_only_teacher_records_what_a_full_forward_records(task, data_root, tmp_path):
    teacher_path = _random_teacher(task, data_root, tmp_path)
    cfg = TrainConfig.model_validate(_config(task, data_root, tmp_path, "x", teacher_path, None))
    t = make_task(cfg)
    val = t.datasets(cfg.data)[1]
    teacher = t.build_model(cfg.teacher)
    teacher.load_state_dict(torch.load(teacher_path, weights_only=True))
    shortcut = t.teacher_forward(teacher)
    assert shortcut is not None and shortcut.__name__ == "backbone_only"
    images = t.images_of(t.collate([val[i] for i in range(3)]))
    feats = {}
    for name, forward in (("full", None), ("backbone", shortcut)):
        calls: list[str] = []
        hook = teacher.register_forward_hook(lambda *_, calls=calls: calls.append("full forward"))
        d = Distiller(t.build_model(cfg.model), teacher, build_points(cfg.distill), teacher_forward=forward)
        feats[name] = d.build(images).teacher_features(images)
        hook.remove()
        assert bool(calls) == (name == "full")  # the shortcut never calls the whole teacher
    assert feats["full"].keys() == feats["backbone"].keys() and feats["full"]
    for label in feats["full"]:
        torch.testing.assert_close(feats["backbone"][label], feats["full"][label], rtol=0, atol=0)
    # a point outside the backbone needs the full forward
    head = cfg.model_copy(
        update={
            "distill": cfg.distill.model_copy(
                update={"points": [cfg.distill.points[0].model_copy(update={"teacher": "head"})]}
            )
        }
    )
    assert make_task(head).teacher_forward(teacher) is None
