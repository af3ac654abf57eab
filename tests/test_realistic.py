"""The evidence study's protocol: weights are chosen on val only, and test is read only after selection."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import realistic as R

SPEC = R.TaskSpec(
    teacher_config="t.yaml",
    student_config="s.yaml",
    metric="miou",
    point={"name": "feat", "student": "a", "teacher": "b"},
    bases={"cwd": {"tau": 1.0}},
    weights={"cwd": R.grid(3.0)},
)


def _fake_backend(val_of, test_of) -> R.Backend:
    runs: dict[Path, tuple] = {}

    def train(task, arm, base, weight, seed):
        run = Path(f"{task}/{base}_{arm.name}_w{weight}_s{seed}")
        runs[run] = (task, arm.name, base, weight, seed)
        return val_of(arm.name, weight, seed), 1.0, run

    def test(task, run):
        return test_of(*runs[run])

    return R.Backend(train, test)


def test_weights_are_chosen_on_val_and_test_is_read_after_every_val_run():
    # val prefers weight 9 for akd-variance and 1 for base; test would prefer the opposite
    def val_of(arm, weight, seed):
        if arm == "student":
            return 0.1
        best = 9.0 if arm == "akd-variance" else 1.0
        return 0.5 - abs((weight or 0) - best) / 100 + seed / 1000

    def test_of(task, arm, base, weight, seed):
        return 0.9 - 0.5 * (weight == (9.0 if arm == "akd-variance" else 1.0)) if arm != "student" else 0.2

    backend = _fake_backend(val_of, test_of)
    records = R.run_protocol({"segmentation": SPEC}, [0, 1, 2], backend)
    kinds = [k for k, _ in backend.events]
    assert kinds.index("test") == kinds.count("val"), "a test read happened before every val run had finished"
    assert kinds.count("val") == 3 * (
        1 + 3 * 3 + 1
    )  # student + 3 tuned arms x 3 weights + the reference recipe, per seed
    test = [r for r in records if r.split == "test"]
    chosen = {(r.arm, r.loss_weight) for r in test}
    assert ("akd-variance", 9.0) in chosen and ("base", 1.0) in chosen and ("student", None) in chosen
    assert len(test) == 3 * 5  # the selected weight of each arm (and the student), every seed, nothing else
    tested_runs = {run for kind, run in backend.events if kind == "test"}
    assert all("akd-variance_w9.0" in run or "akd-variance" not in run for run in tested_runs)


def test_selection_refuses_test_records_and_unfinished_grids():
    val = [R.Record("seg", "cwd", "base", s, w, "val", "miou", 0.1 * w) for s in (0, 1) for w in (1.0, 3.0)]
    assert R.select_weights(val) == {("seg", "cwd", "base"): 3.0}
    with pytest.raises(ValueError, match="may only read val results"):
        R.select_weights(val + [R.Record("seg", "cwd", "base", 0, 1.0, "test", "miou", 0.9)])
    with pytest.raises(ValueError, match="different numbers of seeds"):
        R.select_weights(val[:-1])
    tie = [R.Record("seg", "cwd", "base", 0, w, "val", "miou", 0.5) for w in (1.0, 3.0, 9.0)]
    assert R.select_weights(tie) == {("seg", "cwd", "base"): 1.0}  # deterministic: the smaller weight


def test_paired_differences_wins_and_adopted_mode():
    rec = []
    for seed, (b, v, r, st) in enumerate([(0.30, 0.32, 0.29, 0.2), (0.31, 0.35, 0.33, 0.21), (0.29, 0.30, 0.27, 0.19)]):
        rec += [
            R.Record("seg", "cwd", "base", seed, 3.0, "test", "miou", b),
            R.Record("seg", "cwd", "akd-variance", seed, 9.0, "test", "miou", v),
            R.Record("seg", "cwd", "akd-relative", seed, 1.0, "test", "miou", r),
            R.Record("seg", "-", "student", seed, None, "test", "miou", st),
        ]
    assert R.paired(rec, "seg", "cwd", "akd-variance", "base") == pytest.approx([0.02, 0.04, 0.01])
    assert R.paired(rec, "seg", "cwd", "base", "student") == pytest.approx([0.10, 0.10, 0.10])
    # the adopted mode is decided on val: here val says relative, test says variance
    val = [
        R.Record(
            r.task,
            r.base,
            r.arm,
            r.seed,
            r.loss_weight,
            "val",
            r.metric,
            r.value + (0.05 if r.arm == "akd-relative" else 0.0),
        )
        for r in rec
    ]
    assert R.adopted_mode(val + rec) == "akd-relative"
    assert (
        R.adopted_mode(
            rec + [R.Record(r.task, r.base, r.arm, r.seed, r.loss_weight, "val", r.metric, r.value) for r in rec]
        )
        == "akd-variance"
    )
    text = R.tables(rec, {"seg": 0.6}, "akd-variance")
    row = next(line for line in text.splitlines() if line.startswith("| cwd | akd-variance"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "akd-variance (adopted as `akd`)" and cells[2] == "9"
    assert cells[4] == "2.33 ± 1.53" and cells[5] == "3/3"


def test_grid_is_x3_around_the_centre():
    assert R.grid(3.0) == [1.0, 3.0, 9.0]


def test_results_json_names_the_adopted_mode_akd():
    recs = [
        R.Record("segmentation", "cwd", "akd-relative", 0, 1.0, "val", "miou", 0.3),
        R.Record("segmentation", "cwd", "akd-variance", 0, 1.0, "val", "miou", 0.2),
    ]
    payload = R.results_json(
        recs,
        [0],
        {"segmentation": 0.6},
        {"segmentation": {"metrics": {"miou": 0.61}, "wall_seconds": 5.0}},
        "akd-relative",
        {},
    )
    assert {r["arm"] for r in payload["runs"]} == {"akd", "akd-variance"}
    assert payload["protocol"]["select_on"] == "val" and payload["protocol"]["report_on"] == "test"
    assert payload["protocol"]["arms"]["akd"] == "akd-relative"
    assert payload["teachers"]["segmentation"] == {"metric": "miou", "test": 0.6, "val": 0.61, "wall_seconds": 5.0}
    assert set(payload["runs"][0]) >= {"task", "base", "arm", "seed", "loss_weight", "split", "metric", "value"}


def test_a_helper_worker_trains_the_same_grid_from_the_other_end_and_never_reads_test():
    forward, helper = _fake_backend(lambda *a: 0.5, lambda *a: 0.9), _fake_backend(lambda *a: 0.5, lambda *a: 0.9)
    R.run_protocol({"segmentation": SPEC}, [0, 1], forward)
    records = R.run_protocol({"segmentation": SPEC}, [0, 1], helper, train_only=True, reverse=True)
    assert {k for k, _ in helper.events} == {"val"} and all(r.split == "val" for r in records)
    forward_val = [run for kind, run in forward.events if kind == "val"]
    assert [run for _, run in helper.events] == forward_val[::-1]


def test_a_run_is_claimed_by_one_live_process(tmp_path):
    import os
    import subprocess

    lock = tmp_path / "run.lock"
    assert R._claim(lock) and lock.read_text() == str(os.getpid())
    assert not R._claim(lock)  # held by a live process (this one)
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    lock.write_text(dead.stdout.strip())  # a finished process's pid: its lock is stale
    assert R._claim(lock) and lock.read_text() == str(os.getpid())
