"""Train / eval / export through the CLI on a tiny dataset, per task, and bad input handling."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from avatarkd.cli import main

MODELS = {
    "segmentation": ({"arch": "fcn", "backbone": "resnet18"}, {"arch": "lraspp", "backbone": "mobilenet_v3_small"}),
    "detection": (
        {
            "arch": "retinanet",
            "backbone": "resnet18",
            "fpn_channels": 32,
            "image_size": 64,
            "anchor_sizes": [8, 16, 32, 64, 128],
        },
        {
            "arch": "fcos",
            "backbone": "mobilenet_v3_small",
            "fpn_channels": 32,
            "image_size": 64,
            "anchor_sizes": [8, 16, 32, 64, 128],
        },
    ),
    "classification": (
        {"arch": "classifier", "backbone": "resnet18"},
        {"arch": "classifier", "backbone": "mobilenet_v3_small"},
    ),
}
POINTS = {
    "segmentation": [
        {"name": "feat", "student": "backbone.body", "teacher": "backbone", "key": "out", "loss": "cwd"},
        {"name": "logits", "student": "", "teacher": "", "key": "out", "loss": "kd"},
    ],
    "detection": [{"name": "fpn", "student": "backbone.fpn", "teacher": "backbone.fpn", "loss": "mgd"}],
    "classification": [{"name": "logits", "student": "classifier", "teacher": "fc", "loss": "kd"}],
}


def write_config(path: Path, **cfg) -> Path:
    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg, default=str))))
    return path


def base_config(task: str, data_root: Path, out: Path, model: dict, steps: int = 2) -> dict:
    return {
        "task": task,
        "seed": 0,
        "output_dir": str(out),
        "data": {"root": str(data_root), "batch_size": 4, "num_classes": 3 if task == "segmentation" else None},
        "model": dict(model),  # a copy: tests edit it (model.weights) and MODELS is shared
        "optim": {"lr": 1e-3},
        "train": {"steps": steps, "log_every": 1, "checkpoint_every": 1, "plots": task != "classification"},
    }


@pytest.mark.parametrize("task", ["segmentation", "detection", "classification"])
def test_teacher_then_akd_student_then_eval_and_export(task, data_root, tmp_path, capsys):
    teacher_model, student_model = MODELS[task]
    tcfg = write_config(tmp_path / "t.yaml", **base_config(task, data_root, tmp_path / "teacher", teacher_model))
    assert main(["train", str(tcfg)]) == 0
    teacher_dir = tmp_path / "teacher"
    for name in ("metrics.json", "metrics.jsonl", "student.pt", "student.json"):
        assert (teacher_dir / name).is_file(), name
    assert len(list((teacher_dir / "checkpoints").glob("step_*.pt"))) == 2  # keep_last default
    assert list((teacher_dir / "tb").iterdir())

    cfg = base_config(task, data_root, tmp_path / "akd", student_model)
    cfg["teacher"] = {**teacher_model, "weights": str(teacher_dir / "student.pt")}
    cfg["distill"] = {"akd": {"num_avatars": 2}, "points": POINTS[task]}
    scfg = write_config(tmp_path / "s.yaml", **cfg)
    assert main(["train", str(scfg)]) == 0
    metrics = json.loads((tmp_path / "akd" / "metrics.json").read_text())
    primary = {"segmentation": "miou", "detection": "map", "classification": "top1"}[task]
    assert 0.0 <= metrics["metrics"][primary] <= 1.0
    rows = [json.loads(line) for line in (tmp_path / "akd" / "metrics.jsonl").read_text().splitlines()]
    assert any("distill_total" in r for r in rows) and any(f"eval/{primary}" in r for r in rows)
    if task != "classification":
        assert (tmp_path / "akd" / "predictions.png").stat().st_size > 0
        assert (tmp_path / "akd" / "uncertainty.png").stat().st_size > 0
        assert (tmp_path / "akd" / "uncertainty_maps.png").stat().st_size > 0

    # the exported student is a plain state_dict with no teacher/connector keys
    exported = torch.load(tmp_path / "akd" / "student.pt", weights_only=True)
    assert not any(k.startswith(("teacher.", "connectors.", "loss_modules.")) for k in exported)
    capsys.readouterr()
    assert main(["eval", str(scfg), "--weights", str(tmp_path / "akd" / "student.pt")]) == 0
    evaluated = json.loads(capsys.readouterr().out)
    assert evaluated[primary] == pytest.approx(metrics["metrics"][primary], abs=1e-6)

    ckpt = sorted((tmp_path / "akd" / "checkpoints").glob("step_*.pt"))[-1]
    assert main(["export", str(ckpt), "--out", str(tmp_path / "exp.pt")]) == 0
    again = torch.load(tmp_path / "exp.pt", weights_only=True)
    assert again.keys() == exported.keys()
    assert all(torch.equal(again[k], exported[k]) for k in again)


def _run_bad(argv: list[str], capsys) -> str:
    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarkd: error: ") and "\n" not in err and "Traceback" not in err
    return err


def test_bad_inputs_give_one_line_and_exit_2(data_root, tmp_path, capsys):
    model = MODELS["classification"][1]
    good = base_config("classification", data_root, tmp_path / "out", model)

    cfg = dict(good, trian={"steps": 1})
    assert "trian: unknown key; did you mean 'train'?" in _run_bad(
        ["train", str(write_config(tmp_path / "a.yaml", **cfg))], capsys
    )
    cfg = dict(good, train={"steps": "many"})
    assert "train.steps" in _run_bad(["train", str(write_config(tmp_path / "b.yaml", **cfg))], capsys)
    (tmp_path / "c.yaml").write_text("task: [classification\n")
    assert "malformed YAML" in _run_bad(["train", str(tmp_path / "c.yaml")], capsys)
    assert "config file not found" in _run_bad(["train", str(tmp_path / "nope.yaml")], capsys)
    cfg = dict(good, data={"root": str(tmp_path / "missing")})
    msg = _run_bad(["train", str(write_config(tmp_path / "d.yaml", **cfg))], capsys)
    assert f"data.root {tmp_path / 'missing'} does not exist" in msg and "classify/{split}/<class>/" in msg
    cfg = dict(
        good, teacher={**model, "weights": str(tmp_path / "none.pt")}, distill={"points": POINTS["classification"]}
    )
    assert "checkpoint not found" in _run_bad(["train", str(write_config(tmp_path / "e.yaml", **cfg))], capsys)
    # nothing of an output directory was created by the failed runs
    assert not (tmp_path / "out").exists()


def test_corrupt_foreign_and_mismatched_checkpoints(data_root, tmp_path, capsys):
    model = MODELS["classification"][1]
    cfg = write_config(tmp_path / "c.yaml", **base_config("classification", data_root, tmp_path / "run", model))
    assert main(["train", str(cfg)]) == 0
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1]
    truncated = tmp_path / "trunc.pt"
    truncated.write_bytes(ckpt.read_bytes()[:1000])
    assert "truncated or corrupted" in _run_bad(["train", str(cfg), "--resume", str(truncated)], capsys)
    assert "truncated or corrupted" in _run_bad(["export", str(truncated), "--out", str(tmp_path / "x.pt")], capsys)
    # weights of another architecture
    other = base_config("classification", data_root, tmp_path / "run2", MODELS["classification"][0])
    other["model"]["weights"] = str(tmp_path / "run" / "student.pt")
    msg = _run_bad(["train", str(write_config(tmp_path / "o.yaml", **other))], capsys)
    assert "do not fit the student architecture" in msg
    # an existing run is not overwritten without --resume
    before = {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "checkpoints").iterdir()}
    assert "--resume" in _run_bad(["train", str(cfg)], capsys)
    assert {p.name: p.stat().st_mtime_ns for p in (tmp_path / "run" / "checkpoints").iterdir()} == before


def test_module_entry_point_help():
    out = subprocess.run([sys.executable, "-m", "avatarkd", "--help"], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "demo" in out.stdout and "train" in out.stdout
