"""``avatarkd avatars``: the Avatars' own quality against hand-checkable cases, on tiny random teachers.

The teachers are untrained (their weights are saved from a fresh build): what is checked is how
Avatars, ensemble and oracle relate to the teacher and to each other, which holds for any weights.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_cli import MODELS, base_config
from tiny_data import write_config, write_tiny_dataset

from avatarkd.capacity import AvatarSwitch, measure_avatars, select_predictions
from avatarkd.cli import main
from avatarkd.config import TrainConfig, load_config, validate
from avatarkd.runner import build_datasets, build_model
from avatarkd.tasks import make_task

POINTS = {
    "segmentation": [{"name": "layer4", "student": "backbone", "key": "out", "loss": "cwd"}],
    "detection": [{"name": "fpn", "student": "backbone.fpn", "loss": "mse"}],
    "classification": [{"name": "layer3", "student": "layer3", "loss": "mse"}],
}


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny_avatars"), n_train=4, n_val=6)


def distill_config(task: str, data_root: Path, tmp_path: Path) -> Path:
    """A distillation config whose teacher is the task's tiny teacher with saved random weights."""
    teacher_model = MODELS[task][0]
    raw = base_config(task, data_root, tmp_path / "run", teacher_model)
    raw["data"]["val_batch_size"] = 3
    plain = validate(TrainConfig, raw)
    model_task = make_task(plain)
    model_task.datasets(plain.data)
    torch.manual_seed(0)
    model = model_task.build_model(plain.model)
    if task == "detection":  # a fresh head scores every anchor ~0.01: below the threshold, no detection at all
        head = model.head.classification_head
        with torch.no_grad():  # classes 1.. fire (index 0 is the background's, never a detection)
            head.cls_logits.bias.view(-1, head.num_classes)[:, 1:] = 0.0
    torch.save(model.state_dict(), tmp_path / "teacher.pt")
    raw["teacher"] = {**teacher_model, "weights": str(tmp_path / "teacher.pt")}
    raw["distill"] = {"akd": {"num_avatars": 2}, "points": POINTS[task]}
    return write_config(tmp_path / f"{task}_akd.yaml", raw)


@pytest.mark.parametrize("task", ["segmentation", "detection"])
def test_p0_avatars_are_the_teacher_exactly(task, data_root, tmp_path):
    cfg = load_config(distill_config(task, data_root, tmp_path))
    result = measure_avatars(cfg, ps=[0.0], num_avatars=2, show_progress=False)
    (row,) = result["points"]
    assert row["avatars"] == [row["teacher"]] * 2
    assert row["ensemble"] == row["teacher"] and row["oracle"] == row["teacher"]
    sigmas = row["uncertainty"]["sigma"]  # no disagreement at p = 0: the factor weighs nothing (all ones)
    assert sigmas and all(s == [1.0] * len(s) for s in sigmas.values())


def test_ensemble_of_identical_avatars_is_one_avatar(data_root, tmp_path):
    cfg = load_config(distill_config("segmentation", data_root, tmp_path))
    result = measure_avatars(cfg, ps=[0.3], seeds=[7, 7, 7], show_progress=False)
    (row,) = result["points"]
    assert row["avatars"][0] == row["avatars"][1] == row["avatars"][2]
    assert row["ensemble"] == row["avatars"][0] and row["oracle"] == row["avatars"][0]
    assert row["avatars"][0] != row["teacher"]  # p = 0.3 on every layer4 element changes the predictions
    different = measure_avatars(cfg, ps=[0.3], seeds=[7, 8, 9], show_progress=False)["points"][0]
    assert different["avatars"][0] == row["avatars"][0]  # seed 7 is the same Avatar in another run
    assert len(set(different["avatars"])) > 1


def test_classification_oracle_is_never_below_the_best_avatar(data_root, tmp_path):
    cfg = load_config(distill_config("classification", data_root, tmp_path))
    result = measure_avatars(cfg, ps=[0.2, 0.5], num_avatars=3, show_progress=False)
    for row in result["points"]:
        assert row["oracle"] >= max(row["avatars"])
        assert 0.0 <= row["ensemble"] <= 1.0
        # the uncertainty factor in the config's mode ('relative'): RMS 1 over channels
        (sigma,) = row["uncertainty"]["sigma"].values()
        assert len(sigma) == 256 and abs(sum(s * s for s in sigma) / len(sigma) - 1.0) < 1e-4


def test_avatar_outputs_differ_from_the_teacher_and_repeat_per_avatar(data_root, tmp_path):
    cfg = load_config(distill_config("segmentation", data_root, tmp_path))
    task = make_task(cfg)
    _, val = build_datasets(task, cfg)
    teacher = build_model(task, cfg.teacher, "teacher", torch.device("cpu")).eval()
    images = torch.stack([val[i][0] for i in range(2)])

    def run(seeds: list[int], k: int | None) -> torch.Tensor:
        switch = AvatarSwitch(
            teacher.backbone, "out", "dropout", 0.2, [torch.Generator().manual_seed(s) for s in seeds]
        )
        try:
            if k is None:
                return teacher(images)["out"]
            with switch.use(k):
                return teacher(images)["out"]
        finally:
            switch.remove()

    with torch.no_grad():
        plain = run([0, 1], None)
        first, second = run([0, 1], 0), run([0, 1], 1)
        again = run([0, 1], 0)
        assert not torch.equal(first, plain) and not torch.equal(first, second)
        torch.testing.assert_close(again, first, rtol=0, atol=0)
        torch.testing.assert_close(teacher(images)["out"], plain, rtol=0, atol=0)  # the hook is gone


def test_oracle_picks_per_image():
    preds = [torch.tensor([0, 0, 0]), torch.tensor([1, 1, 1])]
    assert select_predictions(preds, torch.tensor([1, 0, 1])).tolist() == [1, 0, 1]
    assert select_predictions([["a0", "a1"], ["b0", "b1"]], torch.tensor([1, 0])) == ["b0", "a1"]


def test_cli_writes_json_with_the_agreed_names_and_plots(data_root, tmp_path, capsys):
    config = distill_config("classification", data_root, tmp_path)
    out = tmp_path / "out" / "avatars.json"
    assert main(["avatars", str(config), "--p", "0,0.3", "--num-avatars", "2", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"task", "metric", "split", "points"} <= set(result)
    assert (result["task"], result["metric"], result["split"]) == ("classification", "top1", "val")
    assert [r["p"] for r in result["points"]] == [0.0, 0.3]
    for row in result["points"]:
        assert {"point", "p", "teacher", "avatars", "ensemble", "oracle"} <= set(row)
        assert row["point"] == "layer3" and len(row["avatars"]) == 2
    assert (out.parent / "avatars.png").stat().st_size > 0 and (out.parent / "avatars_sigma.png").stat().st_size > 0
    assert "| layer3 | 0.3 |" in capsys.readouterr().out


@pytest.mark.parametrize(
    "args, message",
    [
        (["--points", "layr3"], "no distillation point named 'layr3'"),
        (["--p", "0.1,1.0"], "p must be in [0, 1)"),
        (["--p", "-0.1"], "p must be in [0, 1)"),
        (["--p", "0.1,x"], "comma-separated numbers"),
        (["--set", "distill=null"], "no distillation points"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(args, message, data_root, tmp_path, capsys):
    config = distill_config("classification", data_root, tmp_path)
    assert main(["avatars", str(config), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarkd: error: avatars:") and message in err and "\n" not in err


def test_detection_image_score_is_true_minus_false_positives():
    from avatarkd.tasks.detection import DetectionTask

    target = {"boxes": torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 30]]), "labels": torch.tensor([1, 2])}
    pred = {
        "boxes": torch.tensor([[0.0, 0, 10, 10], [0, 0, 10, 11], [20, 20, 30, 30], [20, 20, 30, 30], [50, 50, 60, 60]]),
        "scores": torch.tensor([0.9, 0.8, 0.7, 0.1, 0.6]),
        "labels": torch.tensor([1, 1, 1, 2, 2]),
    }
    # TP (box 1), FP (duplicate of the matched box), FP (wrong class), ignored (score < 0.5), FP (no box)
    task = object.__new__(DetectionTask)
    assert task.image_scores((None, [target]), [pred]).tolist() == [1.0 - 3.0]
