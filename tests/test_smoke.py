"""What users run first: every shipped config, ``avatarkd demo --quick`` and the study's run builder, 2 steps each."""

from __future__ import annotations

import json
import sys
from importlib import resources
from pathlib import Path

import pytest
import torch
from tiny_data import SMOKE_RUN

from avatarkd import demo
from avatarkd.cli import main
from avatarkd.config import TrainConfig, apply_overrides, validate
from avatarkd.demo import packaged_config
from avatarkd.runner import train
from avatarkd.tasks import make_task

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import quality

SHIPPED = sorted(p.name for p in (resources.files("avatarkd") / "configs").iterdir() if p.name.endswith(".yaml"))
SMALL = SMOKE_RUN
TEACHER_ROW = "teacher (LR-ASPP/mobilenet_v2, ImageNet)"


def _random_teacher(raw: dict, tmp: Path) -> Path:
    """Weights for the config's teacher architecture (only shapes matter for a smoke run)."""
    cfg = validate(TrainConfig, {**raw, "distill": None, "teacher": None, "model": raw["teacher"]})
    task = make_task(cfg)
    task.datasets(cfg.data)
    path = tmp / "teacher.pt"
    torch.save(task.build_model(cfg.model).state_dict(), path)
    return path


def test_every_shipped_config_is_covered():
    assert {
        "seg_teacher.yaml",
        "seg_student.yaml",
        "seg_akd.yaml",
        "seg_pretrained_teacher.yaml",
        "seg_pretrained_student.yaml",
        "seg_pretrained_akd.yaml",
        "det_teacher.yaml",
        "det_akd.yaml",
        "cls_teacher.yaml",
        "cls_akd.yaml",
    } <= set(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_config_trains_two_steps(name, tmp_path):
    raw = apply_overrides(packaged_config(name), SMALL + [f"output_dir={tmp_path / 'run'}"])
    if raw.get("teacher"):
        raw["teacher"]["weights"] = str(_random_teacher(raw, tmp_path))
    result = train(validate(TrainConfig, raw, name))
    assert result["step"] == 2 and result["primary_metric"] in result["metrics"]
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    if raw.get("distill"):
        assert all(r["distill_total"] > 0 for r in rows if "distill_total" in r)


def _demo(tmp_path: Path, capsys) -> dict:
    assert main(["demo", "--quick", "--output-dir", str(tmp_path / "demo"), "--json", str(tmp_path / "demo.json")]) == 0
    table = capsys.readouterr().out
    assert "| AKD (CWD logits + CWD feat, K=4, relative)" in table and "Total wall clock" in table
    summary = json.loads((tmp_path / "demo.json").read_text())
    assert [a["arm"].split(" (")[0] for a in summary["arms"]] == ["teacher", "student alone", "base KD", "AKD"]
    assert summary == json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert all(a["step"] == 6 for a in summary["arms"]) and summary["quick"] is True
    return summary


@pytest.mark.slow
def test_demo_quick_runs_end_to_end(tmp_path, capsys):
    assert _demo(tmp_path, capsys)["teacher_reused"] is False


def test_demo_quick_reuses_a_finished_teacher(tmp_path, capsys):
    """The three student arms, the table and the JSON; the teacher arm is the teacher config's run (tested above)."""
    raw = packaged_config(demo.TEACHER)
    task = make_task(validate(TrainConfig, raw))
    task.datasets(task.cfg.data)
    folder = tmp_path / "demo" / "teacher"
    folder.mkdir(parents=True)
    torch.manual_seed(0)
    torch.save(task.build_model(task.cfg.model).state_dict(), folder / "student.pt")
    finished = {"step": 6, "metrics": {"miou": 0.25, "pixel_acc": 0.75}, "wall_seconds": 60.0}
    (folder / "metrics.json").write_text(json.dumps(finished))
    summary = _demo(tmp_path, capsys)
    assert summary["teacher_reused"] is True and summary["arms"][0] == {"arm": TEACHER_ROW, **finished}
    assert f"| {TEACHER_ROW} | 0.2500 | 0.7500 | 6 | 1.0 min |" in summary["table"]


def test_study_run_builder_makes_runs_that_train(tmp_path):
    """Two steps of every arm of one seed, both tasks, one base loss: the overrides the study writes are valid."""
    teachers = {}
    for task, spec in quality.TASKS.items():
        name, extra = spec["teacher"]
        raw = apply_overrides(packaged_config(name), extra)
        folder = tmp_path / f"{task}_teacher"
        folder.mkdir()
        cfg = validate(TrainConfig, raw)
        t = make_task(cfg)
        t.datasets(cfg.data)
        torch.save(t.build_model(cfg.model).state_dict(), folder / "student.pt")
        (folder / "metrics.json").write_text(json.dumps({"metrics": {spec["metric"]: 0.5}, "wall_seconds": 1.0}))
        teachers[task] = folder
    runs = quality.study(
        list(quality.TASKS),
        [0],
        {t: 2 for t in quality.TASKS},
        tmp_path / "study",
        ablations=[],
        teachers=teachers,
        bases=["cwd"],
        extra=SMALL[1:],
    )
    arms = {(r["task"], r["arm"]) for r in runs}
    assert {(t, a) for t in quality.TASKS for a in ("teacher", "student", *quality.ARMS)} <= arms
    for run_dir in (tmp_path / "study").glob("*/*_s0"):
        assert json.loads((run_dir / "metrics.json").read_text())["step"] == 2, run_dir
