"""The study's bookkeeping: paired differences, run reuse and argument checks (no training)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import quality


def _run(arm: str, base: str, seed: int, value: float) -> dict:
    return {"task": "segmentation", "base": base, "arm": arm, "seed": seed, "metric": "miou", "value": value}


def test_table_pairs_akd_with_its_base_per_seed():
    runs = [_run("teacher", "-", 0, 0.40), _run("student", "-", 0, 0.10), _run("student", "-", 1, 0.12)]
    # seed 0: akd - base = +0.02; seed 1: -0.04 -> mean -1.00, std 4.24 (x100); wins 1/2
    for seed, (b, ref, akd) in enumerate([(0.20, 0.19, 0.22), (0.30, 0.31, 0.26)]):
        runs += [_run("base", "cwd", seed, b), _run("akd-reference", "cwd", seed, ref), _run("akd", "cwd", seed, akd)]
    runs += [_run("ablation:num_avatars=8", "cwd", 0, 0.25), _run("ablation:num_avatars=8", "cwd", 1, 0.27)]
    text = quality.table(runs)
    row = next(line for line in text.splitlines() if line.startswith("| cwd |"))
    cells = [c.strip() for c in row.strip("|").split("|")]
    assert cells[1] == "25.00 ± 7.07"  # base over seeds
    assert cells[4] == "0.00 ± 1.41"  # akd-reference - base: -1, +1
    assert cells[5] == "-1.00 ± 4.24"  # akd - base: +2, -4
    assert cells[6] == "1/2"  # akd-reference beat base on seed 1 only
    assert cells[7] == "1/2"  # akd beat base on seed 0 only
    abl = next(line for line in text.splitlines() if line.startswith("| num_avatars=8 |"))
    assert [c.strip() for c in abl.strip("|").split("|")] == ["num_avatars=8", "26.00 ± 1.41", "1.00 ± 5.66", "2"]


def test_ablation_at_the_default_value_reuses_the_akd_run(tmp_path):
    assert quality._ablation_dir(tmp_path, "cwd", "num_avatars", 4, 1) == tmp_path / "cwd_akd_s1"
    assert quality._ablation_dir(tmp_path, "cwd", "num_avatars", 8, 1) == tmp_path / "ablation_num_avatars_8_s1"


def test_finished_runs_are_reused_not_retrained(tmp_path):
    (tmp_path / "metrics.json").write_text('{"metrics": {"miou": 0.5}, "wall_seconds": 3.0}')
    assert quality._run("no-such-config.yaml", [], tmp_path)["metrics"]["miou"] == 0.5


def test_bad_steps_argument_is_one_readable_line():
    with pytest.raises(SystemExit, match="expected TASK=N"):
        quality._parse_steps(["segmentation=many"])


def test_paired_plot_is_drawn(tmp_path):
    runs = [_run("base", "cwd", s, 0.2) for s in (0, 1)] + [_run("akd", "cwd", s, 0.21) for s in (0, 1)]
    runs += [_run("akd-reference", "cwd", s, 0.19) for s in (0, 1)]
    assert quality.plot_paired(runs, tmp_path / "p.png")
    assert (tmp_path / "p.png").stat().st_size > 5000
    assert not quality.plot_paired([_run("student", "-", 0, 0.1)], tmp_path / "none.png")


def test_ablation_keys_are_per_task_and_checked():
    assert quality._parse_ablation_keys(["detection=uncertainty,p"]) == {"detection": ["uncertainty", "p"]}
    with pytest.raises(SystemExit, match="expected TASK=KEY"):
        quality._parse_ablation_keys(["detection=temperature"])


def test_ablation_plot_has_a_row_per_task(tmp_path):
    runs = [_run("base", "cwd", 0, 0.2), _run("ablation:p=0.2", "cwd", 0, 0.21), _run("ablation:K=2", "cwd", 0, 0.22)]
    det = [dict(r, task="detection", metric="map") for r in runs[:2]]
    assert quality.plot_ablations(runs + det, tmp_path / "a.png")
    from PIL import Image

    with Image.open(tmp_path / "a.png") as im:
        assert im.size[1] > 1.5 * im.size[0] / 2  # two rows of panels, two columns


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args",
    [
        ("loss_overhead.py", ["--shape", "2x4x8x8", "--repeats", "1", "--losses", "mse", "cwd"]),
        ("data_loading.py", ["--batches", "2", "--repeats", "1"]),
        ("engine.py", ["--steps", "3", "--repeats", "1", "--warmup-steps", "1"]),
        ("overhead.py", ["--tasks", "detection", "--repeats", "1", "--warmup", "0", "--arms", "base", "4", "4x"]),
    ],
)
def test_benchmark_scripts_run_end_to_end_on_tiny_settings(script, args, tmp_path):
    """The benchmark scripts still run and write their JSON (their timings are not checked here)."""
    import json
    import os
    import subprocess

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out.json"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(root)}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), *args, "--out", str(out)],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(out.read_text())


def test_demo_threads_reports_each_arms_range_across_thread_counts():
    from benchmarks import demo_threads

    def run(t: float, s: float, wall: float) -> dict:
        arms = [{"arm": "teacher (x)", "metrics": {"miou": t}}, {"arm": "student alone (y)", "metrics": {"miou": s}}]
        return {"arms": arms, "total_wall_seconds": wall}

    runs = {2: run(0.60, 0.50, 240.0), 1: run(0.58, 0.53, 420.0)}
    rows = demo_threads.spread(runs)
    assert rows == [
        {"arm": "teacher (x)", "miou": {"2": 0.6, "1": 0.58}, "range_x100": 2.0},
        {"arm": "student alone (y)", "miou": {"2": 0.5, "1": 0.53}, "range_x100": 3.0},
    ]
    text = demo_threads.table(rows, runs)
    assert "| student alone (y) | 0.5000 | 0.5300 | 3.00 |" in text
    assert "2 thread(s) 4.0 min, 1 thread(s) 7.0 min" in text


@pytest.mark.slow
@pytest.mark.parametrize(
    "script,args,printed",
    [
        ("demo_threads.py", ["--quick", "--threads", "2", "1"], "| arm | 2 threads | 1 thread | range (x100) |"),
        ("shipped_cls.py", ["--quick"], "akd_student: cls_akd.yaml, 6 steps"),
    ],
)
def test_quick_benchmark_scripts_run_end_to_end(script, args, printed):
    """``--quick`` trains 6 steps per run in a temp dir and writes nothing under docs/."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    docs = {p: p.stat().st_mtime_ns for p in (root / "docs").rglob("*.json")}
    proc = subprocess.run(
        [sys.executable, str(root / "benchmarks" / script), *args], capture_output=True, text=True, timeout=900
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert printed in proc.stdout
    assert {p: p.stat().st_mtime_ns for p in (root / "docs").rglob("*.json")} == docs
