"""Does AKD help where the paper says it does? Pretrained pairs, the published recipes, every arm tuned, enough seeds.

The study of issue 21, a sibling of ``realistic.py``:

- **Pairs.** Teacher and student backbones both ImageNet-pretrained, the teacher's stronger, both
  at 128 px: EfficientNet-Lite2 (77.6% ImageNet top-1; the registry file mapped onto timm's
  ``tf_efficientnet_lite2``) teaches MobileNetV2 (71.9%; torchvision's IMAGENET1K_V1 file), under
  the same head per task (a top-down decoder for segmentation, FCOS with a 64-channel FPN for
  detection). Files fetched and verified by ``benchmarks/pretrained.py``.
- **Base recipes as published.** Segmentation: CWD on the logit maps (tau 4) plus the last
  feature stage; detection: CWD on the FPN levels P3-P6 (P7 is 1x1 at 128 px: a softmax over one
  position is constant, so it is skipped).
- **Arms.** ``student``; ``base``; AKD as a 2x2, K in {1, 4} x uncertainty in {batchnorm, relative}
  (``akd-k1-batchnorm`` is the reference code's recipe), dropout 0.1.
- **Every distilled arm tuned** on three weights x3 apart. ``base`` is centred on the published
  weight; each AKD arm on ``base centre * g_base / g_arm``, where ``g`` is the norm of the
  distillation loss's gradient at the student's distilled features (loss weight 1, the same first
  training batches, the same initial student), so that each arm's grid starts where its gradient
  matches the base loss's.
- **Two stages.** Selection on val with 3 seeds (the weight of each arm; then the best AKD arm
  other than the reference); confirmation on test with 10 seeds (the 3 included) for ``student``,
  ``base``, the reference and that arm, each at its selected weight. Test is read only in stage 2,
  after every selection, and teachers are accepted on val (>= 0.55 mIoU, >= 0.30 mAP).
- **Bookkeeping.** Each finished run leaves a small JSON record in
  ``benchmarks/results/paper_regime/<run-id>.json`` (commit them as they land): it is reused only
  while the hash of its resolved config (teacher identity, model code and weights files included)
  and of ``avatarkd/``'s source both match. Collapsed runs (below half the student alone) are
  listed with their cause.

    python benchmarks/pretrained.py --fetch --verify                 # once per machine: files, hashes, predictions
    python benchmarks/paper_regime.py --plan                         # the design, grids pending, estimated hours
    OMP_NUM_THREADS=1 python benchmarks/paper_regime.py &            # worker 1: teachers, grids, both stages, test
    OMP_NUM_THREADS=1 python benchmarks/paper_regime.py --helper &   # worker 2: same jobs from the other end
    python benchmarks/paper_regime.py --docs                         # reuse everything; docs/results.json etc.
    python benchmarks/paper_regime.py --smoke                        # the whole pipeline, tiny, in a temp dir

Summary statistics (``benchmarks/_study.py``): per arm on test, mean and std over seeds; the
paired per-seed difference to ``base`` with its 95% t-interval (``mean +- t_{0.975, n-1} sd/sqrt(n)``)
and wins; ``mde80``, the smallest true mean difference the two-sided paired t-test at 5% detects
with 80% power for the observed paired sd and n, solved with the noncentral t distribution.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import _study  # noqa: E402
from benchmarks._stats import mean_std  # noqa: E402

log = logging.getLogger("paper_regime")

CONFIGS = ROOT / "benchmarks" / "configs"
RECORDS = ROOT / "benchmarks" / "results" / "paper_regime"
OUT = ROOT / "benchmarks" / "out" / "paper_regime"
MODEL_CODE = (CONFIGS / "paper_models.py", CONFIGS / "study_models.py")  # part of every config hash
SELECTION_SEEDS = (0, 1, 2)
CONFIRMATION_SEEDS = tuple(range(10))  # the selection seeds included
P_GRID = "0.05,0.1,0.2,0.3"  # the Avatars tables' drop rates


# ----------------------------------------------------------------------------- the design
@dataclass(frozen=True)
class TaskDesign:
    """One task: configs, metric, base loss, the base weight's centre, the teacher's acceptance bar."""

    teacher_config: str
    student_config: str
    metric: str
    base: str  # the base distillation loss (every point of the student config uses it)
    base_centre: float  # the published/shipped weight: centre of base's grid
    accept: float  # the teacher's val metric must reach this (a design decision on val only)
    teacher_backbone: str
    student_backbone: str
    teacher_file: str  # benchmarks.pretrained.FILES key of the teacher's ImageNet file


DESIGNS: dict[str, TaskDesign] = {
    "segmentation": TaskDesign(
        "paper_seg_teacher.yaml",
        "paper_seg_student.yaml",
        "miou",
        "cwd",
        3.0,
        0.55,
        "efficientnet_lite2 (timm:tf_efficientnet_lite2)",
        "mobilenet_v2",
        "efficientnet_lite2",
    ),
    "detection": TaskDesign(
        "paper_det_teacher.yaml",
        "paper_det_student.yaml",
        "map",
        "cwd",
        2.0,
        0.30,
        "efficientnet_lite2 (timm:tf_efficientnet_lite2)",
        "mobilenet_v2",
        "efficientnet_lite2",
    ),
}


@dataclass(frozen=True)
class Arm:
    name: str
    num_avatars: int | None = None  # None: not AKD
    uncertainty: str | None = None
    distilled: bool = True

    def overrides(self) -> list[str]:
        if not self.distilled:
            return ["distill=null", "teacher=null"]
        if self.num_avatars is None:
            return ["distill.akd.enabled=false"]
        return [
            "distill.akd.enabled=true",
            f"distill.akd.num_avatars={self.num_avatars}",
            "distill.akd.perturbation=dropout",
            "distill.akd.p=0.1",
            f"distill.akd.uncertainty={self.uncertainty}",
        ]


ARMS: tuple[Arm, ...] = (
    Arm("student", distilled=False),
    Arm("base"),
    *(Arm(f"akd-k{k}-{u}", k, u) for k in (1, 4) for u in ("batchnorm", "relative")),
)
ARM_BY_NAME = {a.name: a for a in ARMS}
REFERENCE = "akd-k1-batchnorm"  # the reference code's recipe
AKD_ARMS = tuple(a.name for a in ARMS if a.num_avatars is not None)


def round2(x: float) -> float:
    """Two significant digits: grid weights stay readable in run ids and tables."""
    return float(f"{x:.2g}")


def grid(centre: float) -> list[float]:
    """Three weights exactly x3 apart, centred on ``centre`` (which :func:`centres` rounds to two digits)."""
    return [centre / 3, centre, centre * 3]


def centres(design: TaskDesign, grad_norms: Mapping[str, float]) -> dict[str, float]:
    """Each distilled arm's grid centre: base's published weight, scaled for each AKD arm by the
    ratio of base's distillation gradient norm to the arm's (measured at weight 1 on the same batches)."""
    g_base = grad_norms["base"]
    out = {"base": round2(design.base_centre)}
    for arm in AKD_ARMS:
        g = grad_norms[arm]
        if not (g > 0 and math.isfinite(g)):
            raise ValueError(f"{arm}: distillation gradient norm {g} cannot centre a grid")
        out[arm] = round2(design.base_centre * g_base / g)
    return out


@dataclass(frozen=True)
class RunKey:
    task: str
    arm: str
    weight: float | None  # None: the student alone
    seed: int

    @property
    def run_id(self) -> str:
        if self.weight is None:
            return f"{self.task}-{self.arm}-s{self.seed}"
        return f"{self.task}-{self.arm}-w{self.weight:.4g}-s{self.seed}"


@dataclass
class Record:
    """One row of ``paper_regime.runs`` (the schema of the issue's Output section)."""

    task: str
    base: str | None
    arm: str
    num_avatars: int | None
    uncertainty: str | None
    seed: int
    loss_weight: float | None
    split: str
    metric: str
    value: float

    def row(self) -> dict[str, Any]:
        return asdict(self)


RUN_FIELDS = ("task", "base", "arm", "num_avatars", "uncertainty", "seed", "loss_weight", "split", "metric", "value")
SUMMARY_FIELDS = (
    "task",
    "base",
    "arm",
    "n",
    "test_mean",
    "test_std",
    "vs_base_mean",
    "vs_base_ci95",
    "wins",
    "mde80",
)


def make_record(designs: Mapping[str, TaskDesign], key: RunKey, split: str, value: float) -> Record:
    arm = ARM_BY_NAME[key.arm]
    d = designs[key.task]
    return Record(
        key.task,
        d.base if arm.distilled else None,
        arm.name,
        arm.num_avatars,
        arm.uncertainty,
        key.seed,
        key.weight,
        split,
        d.metric,
        value,
    )


# ----------------------------------------------------------------------------- the protocol
class TeacherRejected(RuntimeError):
    """A teacher below its acceptance bar on val: redesign it (on val) before any student runs."""


@dataclass
class Backend:
    """What the protocol needs from the world (fakes in the bookkeeping tests).

    ``teacher(task) -> val``; ``grad_norm(task, arm) -> float``; ``train(key) -> val`` (trains or
    reuses); ``test(key) -> test value``; ``teacher_test(task) -> test value``. ``events`` records
    every call in order, so tests can check that no test value is read before selection is final.
    """

    teacher: Callable[[str], float]
    grad_norm: Callable[[str, str], float]
    train: Callable[[RunKey], float]
    test: Callable[[RunKey], float]
    teacher_test: Callable[[str], float]
    events: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class StudyResult:
    teachers_val: dict[str, float] = field(default_factory=dict)
    teachers_test: dict[str, float] = field(default_factory=dict)
    grad_norms: dict[str, dict[str, float]] = field(default_factory=dict)
    grids: dict[str, dict[str, list[float]]] = field(default_factory=dict)
    selected: dict[str, dict[str, float | None]] = field(default_factory=dict)
    best_other: dict[str, str] = field(default_factory=dict)
    records: list[Record] = field(default_factory=list)
    extended: list[tuple[str, str, float]] = field(default_factory=list)  # (task, arm, weight) added on an edge


def stage1_jobs(
    tasks: Sequence[str], grids: Mapping[str, Mapping[str, list[float]]], seeds: Sequence[int]
) -> list[RunKey]:
    """Seed-major, so that a study cut short still has every arm on its first seeds."""
    return [
        RunKey(task, arm.name, weight, seed)
        for task in tasks
        for seed in seeds
        for arm in ARMS
        for weight in (grids[task][arm.name] if arm.distilled else [None])
    ]


MAX_EXTENSIONS = 2  # rounds (at most one new weight per arm each); an edge left after them is reported


def _val_by_weight(val: Iterable[Record], decision: str) -> dict[str, dict[str, dict[float | None, list[float]]]]:
    """task -> arm -> loss weight -> val values over seeds; a test record raises (``decision`` names the
    decision that would have read the test split)."""
    by: dict[str, dict[str, dict[float | None, list[float]]]] = {}
    for r in val:
        if r.split != "val":
            raise ValueError(f"{decision} may only read val results, got a {r.split!r} record: {r}")
        by.setdefault(r.task, {}).setdefault(r.arm, {}).setdefault(r.loss_weight, []).append(r.value)
    return by


def _best_weight(per_weight: Mapping[float | None, list[float]]) -> float | None:
    """The weight with the best val mean over seeds (ties: the smaller weight): ``select``'s rule."""
    return max(per_weight, key=lambda w: (statistics.mean(per_weight[w]), -(w or 0.0)))


def edge_extensions(
    val: Iterable[Record], grids: Mapping[str, Mapping[str, list[float]]]
) -> list[tuple[str, str, float]]:
    """(task, arm, weight) to add to stage 1: for every distilled arm whose best val weight is the largest
    (smallest) of its grid, that weight x3 (/3), keeping the grid's spacing.

    A grid centred by a gradient ratio can still miss an arm's optimum; an arm "tuned" with its best
    weight on an edge was not, and the comparison with base would favour whichever arm the centring
    happened to suit. Only val records are read.
    """
    by = _val_by_weight(val, "grid extension")
    out = []
    for task, arms in grids.items():
        for arm, weights in arms.items():
            per_weight = by.get(task, {}).get(arm, {})
            if len(weights) < 2 or set(weights) - set(per_weight):
                continue
            best = _best_weight({w: per_weight[w] for w in weights})
            if best == max(weights):
                out.append((task, arm, max(weights) * 3))
            elif best == min(weights):
                out.append((task, arm, min(weights) / 3))
    return out


def select(val: Iterable[Record]) -> tuple[dict[str, dict[str, float | None]], dict[str, str]]:
    """Per task: each arm's weight with the best val mean over seeds (ties: the smaller weight), and
    the best AKD arm other than the reference (its val mean at its selected weight; ties: list order).

    Only val records are accepted: a test record here would mean a decision read the test split.
    """
    by = _val_by_weight(val, "selection")
    chosen: dict[str, dict[str, float | None]] = {}
    best: dict[str, str] = {}
    for task, arms in by.items():
        chosen[task], means = {}, {}
        for arm, per_weight in arms.items():
            counts = {len(v) for v in per_weight.values()}
            if len(counts) != 1:
                raise ValueError(f"{task} {arm}: weights ran on different numbers of seeds {sorted(counts)}")
            w = _best_weight(per_weight)
            chosen[task][arm], means[arm] = w, statistics.mean(per_weight[w])
        others = [a for a in AKD_ARMS if a != REFERENCE and a in means]
        if others:
            best[task] = max(others, key=lambda a: (means[a], -others.index(a)))
    return chosen, best


def run_study(
    designs: Mapping[str, TaskDesign],
    backend: Backend,
    selection_seeds: Sequence[int] = SELECTION_SEEDS,
    confirmation_seeds: Sequence[int] = CONFIRMATION_SEEDS,
    train_only: bool = False,
    reverse: bool = False,
    enforce_acceptance: bool = True,
) -> StudyResult:
    """Teachers (accepted on val), grids (centred by measured gradient ratios), stage 1 on val,
    selection, stage 2 training, and only then every test read.

    ``train_only``/``reverse``: a helper worker that trains the same jobs from the other end and
    never reads test.
    """
    if not set(selection_seeds) <= set(confirmation_seeds):
        raise ValueError("the confirmation seeds must include the selection seeds")
    res = StudyResult()
    tasks = list(designs)
    for task in reversed(tasks) if reverse else tasks:  # a helper trains the other task's teacher meanwhile
        res.teachers_val[task] = backend.teacher(task)
        backend.events.append(("teacher-val", task))
        if enforce_acceptance and res.teachers_val[task] < designs[task].accept:
            raise TeacherRejected(
                f"{task} teacher: val {designs[task].metric} {res.teachers_val[task]:.4f} < "
                f"{designs[task].accept}: redesign it on val before running students"
            )
        res.grad_norms[task] = {a.name: backend.grad_norm(task, a.name) for a in ARMS if a.distilled}
        res.grids[task] = {arm: grid(c) for arm, c in centres(designs[task], res.grad_norms[task]).items()}
    res.grids = {task: res.grids[task] for task in tasks}  # the designs' order, whichever order they were made in
    # stage 1: selection runs, val only
    jobs = stage1_jobs(tasks, res.grids, selection_seeds)
    for key in reversed(jobs) if reverse else jobs:
        value = backend.train(key)
        backend.events.append(("val", key.run_id))
        res.records.append(make_record(designs, key, "val", value))
    # arms whose best val weight sits on an edge of their grid get the next weight out, on the same seeds
    for _ in range(MAX_EXTENSIONS):
        added = edge_extensions(res.records, res.grids)
        if not added:
            break
        res.extended += added
        for task, arm, weight in added:
            res.grids[task][arm] = sorted([*res.grids[task][arm], weight])
        more = [RunKey(task, arm, weight, seed) for seed in selection_seeds for task, arm, weight in added]
        for key in reversed(more) if reverse else more:
            value = backend.train(key)
            backend.events.append(("val", key.run_id))
            res.records.append(make_record(designs, key, "val", value))
    res.selected, res.best_other = select(res.records)
    backend.events.append(("selected", json.dumps(res.best_other, sort_keys=True)))
    # stage 2: confirmation runs at the selected weights (the selection seeds' runs are reused)
    confirm = [
        RunKey(task, arm, res.selected[task][arm], seed)
        for task in tasks
        for seed in confirmation_seeds
        for arm in ("student", "base", REFERENCE, res.best_other[task])
    ]
    done = {(r.task, r.arm, r.loss_weight, r.seed) for r in res.records}
    for key in reversed(confirm) if reverse else confirm:
        if (key.task, key.arm, key.weight, key.seed) not in done:
            value = backend.train(key)
            backend.events.append(("val", key.run_id))
            res.records.append(make_record(designs, key, "val", value))
    if train_only:
        return res
    for key in confirm:
        value = backend.test(key)
        backend.events.append(("test", key.run_id))
        res.records.append(make_record(designs, key, "test", value))
    for task in tasks:
        res.teachers_test[task] = backend.teacher_test(task)
        backend.events.append(("teacher-test", task))
    return res


# ----------------------------------------------------------------------------- summaries
def paired(records: Sequence[Record], task: str, arm: str, against: str = "base", split: str = "test") -> list[float]:
    """Per-seed differences ``arm - against`` on ``split`` (each at the weight its records carry)."""

    def by_seed(name: str) -> dict[int, float]:
        return {r.seed: r.value for r in records if r.task == task and r.split == split and r.arm == name}

    a, b = by_seed(arm), by_seed(against)
    return [a[s] - b[s] for s in sorted(set(a) & set(b))]


def summary(records: Sequence[Record]) -> list[dict[str, Any]]:
    """One row per (task, arm) on test, with exactly the issue's fields (``SUMMARY_FIELDS``)."""
    rows = []
    for task in dict.fromkeys(r.task for r in records):
        test = [r for r in records if r.task == task and r.split == "test"]
        for arm in dict.fromkeys(r.arm for r in test):
            values = [r.value for r in test if r.arm == arm]
            mean, sd = _study.mean_sd(values)
            vs = _study.paired_summary(paired(test, task, arm)) if arm != "base" else None
            rows.append(
                {
                    "task": task,
                    "base": next(r.base for r in test if r.arm == arm),
                    "arm": arm,
                    "n": len(values),
                    "test_mean": mean,
                    "test_std": sd,
                    "vs_base_mean": vs["mean"] if vs else None,
                    "vs_base_ci95": vs["ci95"] if vs else None,
                    "wins": vs["wins"] if vs else None,
                    "mde80": vs["mde80"] if vs else None,
                }
            )
    return rows


def collapsed(records: Sequence[Record], causes: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
    """Runs below half the student alone (same task and split, mean over seeds), with their cause."""
    out = []
    for r in records:
        student = [s.value for s in records if s.task == r.task and s.split == r.split and s.arm == "student"]
        if r.arm == "student" or not student:
            continue
        bar = 0.5 * statistics.mean(student)
        if r.value < bar:
            key = RunKey(r.task, r.arm, r.loss_weight, r.seed)
            out.append(
                {
                    "run": key.run_id,
                    "split": r.split,
                    "value": r.value,
                    "half_student": bar,
                    "cause": (causes or {}).get(key.run_id, "unknown"),
                }
            )
    return out


def answer(rows: Sequence[Mapping[str, Any]], best_other: Mapping[str, str]) -> dict[str, dict[str, str]]:
    """Per task, for the best other AKD arm and the reference recipe, one plain sentence: its paired
    difference to base with the 95% interval, and whether the interval excludes 0 and on which side."""
    out: dict[str, dict[str, str]] = {}
    for task, arm in best_other.items():
        for name in (arm, REFERENCE):
            row = next((r for r in rows if r["task"] == task and r["arm"] == name), None)
            if row is None or row["vs_base_ci95"] is None:
                continue
            lo, hi = row["vs_base_ci95"]
            verdict = "above base (interval excludes 0)" if lo > 0 else "below base (interval excludes 0)"
            if lo <= 0 <= hi:
                verdict = "not distinguishable from base (interval includes 0)"
            out.setdefault(task, {})[name] = (
                f"{task}: {name} vs base {100 * row['vs_base_mean']:+.2f} x100, 95% CI "
                f"[{100 * lo:+.2f}, {100 * hi:+.2f}] over {row['n']} seeds, wins {row['wins']}/{row['n']}: "
                f"{verdict}; mde80 {100 * row['mde80']:.2f}"
            )
    return out


def table(res: StudyResult, designs: Mapping[str, TaskDesign]) -> str:
    """Markdown: per task the test summary, then the val grid of stage 1."""
    rows = summary(res.records)
    out = []
    for task in res.grids:
        metric = designs[task].metric
        out += [
            f"\n### {task}: test split ({metric} x 100; weights selected on val)",
            f"teacher {designs[task].teacher_backbone}: val {100 * res.teachers_val[task]:.2f}, "
            f"test {100 * res.teachers_test.get(task, float('nan')):.2f}; student {designs[task].student_backbone}",
            "",
            "| arm | weight | n | test | - base (paired) | 95% CI | wins | mde80 |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for row in (r for r in rows if r["task"] == task):
            w = res.selected[task].get(row["arm"])
            ci = row["vs_base_ci95"]
            out.append(
                f"| {row['arm']} | {'-' if w is None else f'{w:.4g}'} | {row['n']} | "
                f"{100 * row['test_mean']:.2f} ± {100 * row['test_std']:.2f} | "
                + (
                    f"{100 * row['vs_base_mean']:+.2f} | [{100 * ci[0]:+.2f}, {100 * ci[1]:+.2f}] | "
                    f"{row['wins']}/{row['n']} | {100 * row['mde80']:.2f} |"
                    if ci is not None
                    else "- | - | - | - |"
                )
            )
        out += ["", f"val grid (stage 1, {metric} x 100, mean ± std over the selection seeds):", ""]
        out += ["| arm | grad-norm ratio base/arm | w: val |", "|---|---|---|"]
        g = res.grad_norms[task]
        for arm, weights in res.grids[task].items():
            cells = [
                f"{w:.4g}: "
                + mean_std(
                    [
                        r.value
                        for r in res.records
                        if r.task == task
                        and r.split == "val"
                        and r.arm == arm
                        and r.loss_weight == w
                        and r.seed in SELECTION_SEEDS
                    ]
                )
                for w in weights
            ]
            out.append(f"| {arm} | {g['base'] / g[arm]:.3g} | " + "; ".join(cells) + " |")
    return "\n".join(out)


def payload(
    res: StudyResult,
    designs: Mapping[str, TaskDesign],
    selection_seeds: Sequence[int],
    confirmation_seeds: Sequence[int],
    causes: Mapping[str, str],
    wall: Mapping[str, float],
) -> dict[str, Any]:
    """``docs/results.json["paper_regime"]``: the issue's schema (protocol, pairs, runs, summary) plus
    the design details under other keys."""
    rows = summary(res.records)
    return {
        "protocol": {
            "select_on": "val",
            "report_on": "test",
            "selection_seeds": list(selection_seeds),
            "confirmation_seeds": list(confirmation_seeds),
        },
        "pairs": {
            task: {
                "teacher": {
                    "backbone": d.teacher_backbone,
                    "pretrained": True,
                    "metric": d.metric,
                    "val": res.teachers_val.get(task),
                    "test": res.teachers_test.get(task),
                },
                "student": {"backbone": d.student_backbone, "pretrained": True},
            }
            for task, d in designs.items()
            if task in res.grids
        },
        "runs": [r.row() for r in res.records],
        "summary": rows,
        "design": {
            "configs": {
                t: {
                    "teacher": f"benchmarks/configs/{d.teacher_config}",
                    "student": f"benchmarks/configs/{d.student_config}",
                }
                for t, d in designs.items()
            },
            "grad_norms": res.grad_norms,
            "grids": res.grids,
            "selected_weights": res.selected,
            "reference_arm": REFERENCE,
            "best_other_akd_arm": res.best_other,
            "grid_extensions": [{"task": t, "arm": a, "weight": w} for t, a, w in res.extended],
            "best_on_grid_edge_after_extensions": [
                {"task": t, "arm": a, "weight": w}
                for t, a, w in edge_extensions(
                    [r for r in res.records if r.split == "val" and r.seed in selection_seeds], res.grids
                )
            ],
            "arms": {a.name: a.overrides() for a in ARMS},
        },
        "collapsed": collapsed(res.records, causes),
        "answer": answer(rows, res.best_other),
        "wall_clock_seconds": dict(wall),
    }


def plot(res: StudyResult, out_png: Path) -> Path:
    """Per task: per-seed paired differences (arm - base, test, x100) per arm, with their mean and 95% CI."""
    from matplotlib.figure import Figure

    from avatarkd.plots import save_figure

    tasks = list(res.grids)
    fig = Figure(figsize=(5.5 * len(tasks), 3.8))
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        arms = [
            a for a in dict.fromkeys(r.arm for r in res.records if r.task == task and r.split == "test") if a != "base"
        ]
        for j, arm in enumerate(arms):
            diffs = [100 * d for d in paired(res.records, task, arm)]
            ax.scatter([j] * len(diffs), diffs, s=18, color=f"C{j}", zorder=3)
            s = _study.paired_summary(diffs)
            if s["ci95"] is not None:
                ax.errorbar(
                    j + 0.2,
                    s["mean"],
                    yerr=[[s["mean"] - s["ci95"][0]], [s["ci95"][1] - s["mean"]]],
                    fmt="o",
                    color="k",
                    capsize=4,
                )
        ax.axhline(0, color="0.4", lw=1)
        ax.set_xticks(range(len(arms)), arms, rotation=20, fontsize=8)
        ax.set_title(f"{task}: test, per seed, arm - base (x100); mean, 95% CI")
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    return save_figure(fig, out_png)


# ----------------------------------------------------------------------------- the real runs
@dataclass
class Settings:
    """Where things go and how big they are (``--smoke`` shrinks every one of them)."""

    out: Path = OUT
    records: Path = RECORDS
    weights_cache: Path = ROOT / "benchmarks" / "out" / "weights"
    torch_home: Path = ROOT / "benchmarks" / "out" / "torch_home"
    extra: tuple[str, ...] = ()  # overrides for every run (smoke: tiny schedules)
    teacher_extra: tuple[str, ...] = ()
    scale_batches: int = 4


def _config(name: str, overrides: Sequence[str]) -> Any:
    from avatarkd.config import load_config

    return load_config(CONFIGS / name, list(overrides))


def _portable(obj: Any) -> Any:
    """Paths under the repository written relative to it, so a hash does not depend on the checkout's location."""
    if isinstance(obj, dict):
        return {k: _portable(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_portable(v) for v in obj]
    if isinstance(obj, str):
        return obj.replace(str(ROOT), "<root>")
    return obj


class RealBackend:
    """Trains with avatarkd; every result goes through a hash-checked record in ``settings.records``."""

    def __init__(self, designs: Mapping[str, TaskDesign], settings: Settings) -> None:
        self.designs, self.s = designs, settings
        self.source_hash = _study.tree_hash(ROOT / "avatarkd")
        self.code_hash = _study.sha256_text("".join(p.read_text() for p in MODEL_CODE))
        self.causes: dict[str, str] = {}
        self.wall: dict[str, float] = {}

    # --- configs and hashes
    def lite_weights(self, task: str) -> str:
        from benchmarks.pretrained import FILES

        return str(self.s.weights_cache / FILES[self.designs[task].teacher_file].converted)

    def teacher_overrides(self, task: str) -> list[str]:
        return [f"model.backbone_weights={self.lite_weights(task)}", *self.s.extra, *self.s.teacher_extra]

    def run_overrides(self, key: RunKey) -> list[str]:
        arm, d = ARM_BY_NAME[key.arm], self.designs[key.task]
        over = [*arm.overrides(), f"seed={key.seed}", *self.s.extra]
        if arm.distilled:
            n_points = len(_config(d.student_config, ["teacher.weights=x"]).distill.points)
            over += [f"teacher.weights={self.teacher_dir(key.task) / 'student.pt'}"]
            over += [f"distill.teacher_cache={self.s.out / 'cache' / key.task}"]
            over += [f"distill.points.{i}.weight={key.weight}" for i in range(n_points)]
        return over

    def config_hash(self, cfg: Any, teacher_hash: str | None) -> str:
        data = cfg.model_dump(mode="json")
        data.pop("output_dir", None)
        if data.get("distill"):
            data["distill"].pop("teacher_cache", None)
        if data.get("teacher"):
            data["teacher"]["weights"] = teacher_hash  # the teacher's identity is its own record's hash
        files = {}
        for m in (data.get("model"), data.get("teacher")):
            bw = (m or {}).get("backbone_weights")
            if bw and Path(bw).is_file():
                files[bw] = Path(bw).name  # named by the source file's SHA-256 prefix
        return _study.json_hash({"config": _portable(data), "code": self.code_hash, "files": _portable(files)})

    def teacher_dir(self, task: str) -> Path:
        return self.s.out / "teachers" / task

    def _read(self, path: Path, config_hash: str) -> dict[str, Any] | None:
        if not path.is_file():
            return None
        rec = json.loads(path.read_text())
        if rec.get("config_hash") == config_hash and rec.get("source_hash") == self.source_hash:
            return rec
        log.info("%s: stale (config or avatarkd source changed); not reused", path.name)
        return None

    def _write(self, path: Path, rec: Mapping[str, Any]) -> None:
        from avatarkd.atomic import atomic_write_json

        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(path, dict(rec))

    def _train_dir(self, name: str, overrides: Sequence[str], run_dir: Path, config_hash: str) -> dict[str, Any]:
        """Train (or resume) into ``run_dir`` under a lock; a directory of another config starts afresh."""
        from avatarkd.engine import NonFiniteLossError
        from avatarkd.runner import train

        lock = run_dir.with_name(run_dir.name + ".lock")
        stamp, identity = run_dir / "hashes.txt", f"{config_hash} {self.source_hash}"  # config and avatarkd source

        def current() -> bool:
            return stamp.is_file() and stamp.read_text() == identity

        while True:
            if (run_dir / "metrics.json").is_file() and current():
                return json.loads((run_dir / "metrics.json").read_text())
            if _study.claim(lock):
                try:
                    if run_dir.exists() and not current():  # another config or source: start afresh
                        shutil.rmtree(run_dir)
                    run_dir.mkdir(parents=True, exist_ok=True)
                    stamp.write_text(identity)
                    try:
                        return train(_config(name, [*overrides, f"output_dir={run_dir}"]), resume=True)
                    except NonFiniteLossError as err:
                        log.warning("%s diverged: %s", run_dir.name, err)
                        return {"metrics": {}, "wall_seconds": 0.0, "diverged": str(err)}
                finally:
                    lock.unlink(missing_ok=True)
            time.sleep(10)  # another worker holds this run

    # --- teachers
    def teacher_hash(self, task: str) -> str:
        cfg = _config(self.designs[task].teacher_config, self.teacher_overrides(task))
        return self.config_hash(cfg, None)

    def teacher(self, task: str) -> float:
        d, h = self.designs[task], self.teacher_hash(task)
        path = self.s.records / f"{task}-teacher.json"
        rec = self._read(path, h)
        if rec is None or not (self.teacher_dir(task) / "student.pt").is_file():
            result = self._train_dir(d.teacher_config, self.teacher_overrides(task), self.teacher_dir(task), h)
            rec = {
                **(rec or {}),
                "run_id": f"{task}-teacher",
                "val": result["metrics"].get(d.metric, 0.0),
                "wall_seconds": result.get("wall_seconds", 0.0),
                "config_hash": h,
                "source_hash": self.source_hash,
            }
            if rec.get("test") is not None:
                rec.pop("test")  # a retrained teacher is re-read on test after selection
            self._write(path, rec)
        self.wall[f"{task}-teacher"] = rec["wall_seconds"]
        return float(rec["val"])

    def teacher_test(self, task: str) -> float:
        from avatarkd.runner import evaluate

        d, h = self.designs[task], self.teacher_hash(task)
        path = self.s.records / f"{task}-teacher.json"
        rec = self._read(path, h)
        assert rec is not None, "teacher_test before teacher"
        if rec.get("test") is None:
            cfg = _config(
                d.teacher_config,
                [
                    *self.teacher_overrides(task),
                    "eval.split=test",
                    "model.backbone_weights=null",
                    f"model.weights={self.teacher_dir(task) / 'student.pt'}",
                    f"output_dir={self.teacher_dir(task)}",
                ],
            )
            rec["test"] = evaluate(cfg)[d.metric]
            self._write(path, rec)
        return float(rec["test"])

    # --- gradient norms
    def grad_norm(self, task: str, arm: str) -> float:
        d = self.designs[task]
        key = RunKey(task, arm, 1.0, SELECTION_SEEDS[0])
        over = self.run_overrides(key)
        cfg = _config(d.student_config, over)
        h = self.config_hash(cfg, self.teacher_hash(task))
        path = self.s.records / f"gradnorm-{task}-{arm}.json"
        rec = self._read(path, _study.json_hash([h, self.s.scale_batches]))
        if rec is None:
            value = measure_grad_norm(d.student_config, over, self.s.scale_batches)
            rec = {
                "task": task,
                "arm": arm,
                "grad_norm": value,
                "batches": self.s.scale_batches,
                "config_hash": _study.json_hash([h, self.s.scale_batches]),
                "source_hash": self.source_hash,
            }
            self._write(path, rec)
        return float(rec["grad_norm"])

    # --- students
    def _run_hash(self, key: RunKey) -> str:
        d = self.designs[key.task]
        cfg = _config(d.student_config, self.run_overrides(key))
        return self.config_hash(cfg, self.teacher_hash(key.task) if ARM_BY_NAME[key.arm].distilled else None)

    def _run_dir(self, key: RunKey) -> Path:
        return self.s.out / key.task / key.run_id

    def train(self, key: RunKey) -> float:
        d, h = self.designs[key.task], self._run_hash(key)
        path = self.s.records / f"{key.run_id}.json"
        rec = self._read(path, h)
        if rec is None:
            result = self._train_dir(d.student_config, self.run_overrides(key), self._run_dir(key), h)
            rec = {
                "run_id": key.run_id,
                **make_record(self.designs, key, "val", result["metrics"].get(d.metric, 0.0)).row(),
                "wall_seconds": result.get("wall_seconds", 0.0),
                "teacher_cache": result.get("teacher_cache"),
                "diverged": result.get("diverged"),
                "last_losses": _last_losses(self._run_dir(key)),
                "config_hash": h,
                "source_hash": self.source_hash,
            }
            self._write(path, rec)
        self.causes[key.run_id] = _cause(rec)
        self.wall[key.run_id] = rec.get("wall_seconds", 0.0)
        return float(rec["value"])

    def test(self, key: RunKey) -> float:
        """The run's test metric; if its weights are gone (another machine), it is retrained first."""
        from avatarkd.runner import evaluate

        d, h = self.designs[key.task], self._run_hash(key)
        path = self.s.records / f"{key.run_id}.json"
        rec = self._read(path, h)
        assert rec is not None, f"test before train: {key.run_id}"
        if rec.get("test") is None:
            run_dir = self._run_dir(key)
            if not (run_dir / "student.pt").is_file():
                log.info("%s: weights not on this machine; retraining for the test read", key.run_id)
                self._train_dir(d.student_config, self.run_overrides(key), run_dir, h)
                rec["retrained_for_test"] = True
            if not (run_dir / "student.pt").is_file():  # diverged: no weights to evaluate
                rec["test"] = 0.0
            else:
                cfg = _config(d.student_config, [*self.s.extra, *_study.alone_on_test(run_dir)])
                rec["test"] = evaluate(cfg)[d.metric]
            self._write(path, rec)
        return float(rec["test"])

    def backend(self) -> Backend:
        return Backend(self.teacher, self.grad_norm, self.train, self.test, self.teacher_test)


def _last_losses(run_dir: Path) -> dict[str, float]:
    path = run_dir / "metrics.jsonl"
    if not path.is_file():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if any(k.startswith("loss") for k in r)]
    if not rows:
        return {}
    return {k: v for k, v in rows[-1].items() if k.startswith(("loss", "distill")) and isinstance(v, (int, float))}


def _cause(rec: Mapping[str, Any]) -> str:
    """A collapsed run's likeliest cause, from its record."""
    if rec.get("diverged"):
        return f"non-finite loss: {rec['diverged']}"
    losses = rec.get("last_losses") or {}
    task, distill = losses.get("loss_task"), losses.get("distill_total")
    if task is not None and distill is not None and distill > 10 * task:
        return f"distillation term dominates at the end (distill {distill:.3g} vs task {task:.3g})"
    if losses:
        return f"finite losses at the end ({', '.join(f'{k} {v:.3g}' for k, v in sorted(losses.items()))})"
    return "unknown (no log)"


def measure_grad_norm(config: str, overrides: Sequence[str], batches: int) -> float:
    """Mean over the first ``batches`` training batches (unshuffled, so the same for every arm) of
    ``sqrt(sum_points |d loss_point / d student feature_point|^2)`` at loss weight 1, from the freshly
    seeded student: the scale of what each point's distillation term pushes into the student's own
    feature there (each point's gradient is taken at its own feature only, so a logits point's
    gradient back-propagated through the head does not count again at the last stage)."""
    import torch
    from torch.utils.data import DataLoader

    from avatarkd.runner import build_trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = _config(config, [*overrides, f"output_dir={tmp}", "data.check_samples=0", "distill.teacher_cache=null"])
        trainer = build_trainer(cfg)
        task, model = trainer.task, trainer.model
        loader = DataLoader(trainer.train_set, batch_size=cfg.data.batch_size, shuffle=False, collate_fn=task.collate)
        captured: dict[str, Any] = {}
        paths = list(dict.fromkeys(p.student for p in cfg.distill.points))
        hooks = [
            model.get_submodule(path).register_forward_hook(lambda m, i, o, path=path: captured.__setitem__(path, o))
            for path in paths
        ]
        trainer.train_module.train()
        norms = []
        try:
            for _, batch in zip(range(batches), loader, strict=False):
                captured.clear()
                losses = task.distill_losses(trainer.train_module, task.to_device(batch, trainer.ctx.device))
                total = 0.0
                for point in cfg.distill.points:
                    out = captured[point.student]
                    feat = out if point.key is None else out[point.key]
                    mine = [
                        v
                        for k, v in losses.items()
                        if k == f"distill.{point.name}" or k.startswith(f"distill.{point.name}.")
                    ]
                    loss = torch.stack(mine).sum()
                    tensors = [t for t in _tensors(feat) if t.requires_grad]
                    grads = torch.autograd.grad(loss, tensors, retain_graph=True, allow_unused=True)
                    total += sum(float(g.pow(2).sum()) for g in grads if g is not None)
                norms.append(math.sqrt(total))
        finally:
            for hook in hooks:
                hook.remove()
    return statistics.mean(norms)


def _tensors(obj: Any) -> list[Any]:
    import torch

    if isinstance(obj, torch.Tensor):
        return [obj]
    if isinstance(obj, Mapping):
        return [t for v in obj.values() for t in _tensors(v)]
    if isinstance(obj, (list, tuple)):
        return [t for v in obj for t in _tensors(v)]
    return []


# ----------------------------------------------------------------------------- the Avatars tables
def avatars_tables(backend: RealBackend, res: StudyResult, out: Path) -> dict[str, Any]:
    """Each study teacher's ``avatarkd avatars`` table at the study's points and p in P_GRID (on val),
    from the base arm's resolved config at its selected weight. A failure is reported, not fatal."""
    import yaml

    tables: dict[str, Any] = {}
    for task, d in backend.designs.items():
        if task not in res.selected:
            continue
        key = RunKey(task, "base", res.selected[task]["base"], SELECTION_SEEDS[0])
        cfg = _config(d.student_config, [*backend.run_overrides(key), "distill.teacher_cache=null"])
        path = out / task / "avatars_config.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(yaml.safe_dump(cfg.model_dump(mode="json", exclude_none=True)))
        target = out / task / "avatars.json"
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(CONFIGS)])}
        cmd = [sys.executable, "-m", "avatarkd", "avatars", str(path), "--p", P_GRID, "--json", str(target)]
        done = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if done.returncode != 0 or not target.is_file():
            tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["no output"]
            log.warning("avatarkd avatars failed for %s: %s", task, tail[0])
            tables[task] = {"error": f"`{' '.join(cmd[1:])}` exited {done.returncode}: {tail[0]}"}
        else:
            tables[task] = json.loads(target.read_text())
    return tables


def write_docs(payload_: Mapping[str, Any], avatars: Mapping[str, Any], text: str, docs: Path) -> None:
    from avatarkd.atomic import atomic_write_json, atomic_write_text

    path = docs / "results.json"
    current = json.loads(path.read_text()) if path.is_file() else {}
    current["paper_regime"] = dict(payload_)
    current.setdefault("avatars", {}).update(avatars)
    atomic_write_json(path, current)
    atomic_write_text(docs / "paper_regime_table.md", text + "\n")


# ----------------------------------------------------------------------------- the plan
def plan(designs: Mapping[str, TaskDesign], settings: Settings, probe_steps: int = 6) -> dict[str, Any]:
    """The jobs and an estimate of their cost: seconds per training step and per evaluation from a
    tiny timing of each model (teacher alone; student alone; a distilled student whose teacher runs
    every step, an upper bound since the teacher cache removes it after the first epochs).

    Timed with one thread, as each of the two workers runs (``OMP_NUM_THREADS=1``): two threads on
    cores other jobs share can be many times slower per step than one (we measured 8 s vs 0.6 s).
    """
    import torch
    from torch.utils.data import DataLoader

    from avatarkd.runner import build_trainer

    torch.set_num_threads(1)
    be = RealBackend(designs, settings)
    n_stage1 = {t: 3 * (1 + 3 * (1 + len(AKD_ARMS))) for t in designs}  # seeds x (student + 5 arms x 3 weights)
    n_stage2 = {t: 4 * (len(CONFIRMATION_SEEDS) - len(SELECTION_SEEDS)) for t in designs}
    rows, total = {}, 0.0
    for task, d in designs.items():
        costs = {}
        for role, name, over in (
            ("teacher", d.teacher_config, be.teacher_overrides(task)),
            ("student", d.student_config, ["distill=null", "teacher=null"]),
            ("distilled", d.student_config, None),
        ):
            with tempfile.TemporaryDirectory() as tmp:
                if over is None:  # a distilled run needs a teacher file: this timing's random teacher
                    tcfg = _config(d.teacher_config, ["model.backbone_weights=null", f"output_dir={tmp}/t"])
                    tr = build_trainer(tcfg)
                    torch.save(tr.model.state_dict(), Path(tmp) / "teacher.pt")
                    over = [
                        f"teacher.weights={Path(tmp) / 'teacher.pt'}",
                        "distill.akd.enabled=true",
                        "distill.akd.num_avatars=4",
                    ]
                cfg = _config(name, [*over, f"output_dir={tmp}/run", "data.check_samples=0", "data.limit_val=64"])
                tr = build_trainer(cfg)
                loader = DataLoader(
                    tr.train_set, batch_size=cfg.data.batch_size, shuffle=True, collate_fn=tr.task.collate
                )
                batches = [
                    tr.task.to_device(b, tr.ctx.device) for _, b in zip(range(probe_steps + 1), loader, strict=False)
                ]
                tr.train_step(batches[0])  # warm-up
                times = []
                for b in batches[1:]:
                    t0 = time.perf_counter()
                    tr.train_step(b)
                    times.append(time.perf_counter() - t0)
                step = statistics.median(times)  # robust to another job's burst on shared cores
                t0 = time.perf_counter()
                tr.evaluate()
                evaluation = (time.perf_counter() - t0) * 400 / 64  # 400 val (or test) images
                evals = 1 + cfg.train.steps // (cfg.train.eval_every or 10**9)
                costs[role] = {
                    "step_s": step,
                    "eval_s": evaluation,
                    "run_s": cfg.train.steps * step + evals * evaluation,
                }
        distilled_runs = n_stage1[task] - 3 + n_stage2[task] * 3 // 4
        student_runs = 3 + n_stage2[task] // 4
        test_reads = 4 * len(CONFIRMATION_SEEDS) + 1
        seconds = (
            costs["teacher"]["run_s"]
            + student_runs * costs["student"]["run_s"]
            + distilled_runs * costs["distilled"]["run_s"]
            + test_reads * costs["student"]["eval_s"]
        )
        rows[task] = {
            "stage1_runs": n_stage1[task],
            "stage2_new_runs": n_stage2[task],
            "costs": costs,
            "estimated_core_hours_one_worker": seconds / 3600,
        }
        total += seconds
    return {
        "tasks": rows,
        "estimated_hours_one_worker_one_thread": total / 3600,
        "estimated_wall_hours_two_workers": total / 7200,
        "fits_budget_of_8_hours": total / 7200 <= 8.0,
        "load_average_during_probe": os.getloadavg(),
        "note": "distilled runs timed with the teacher run every step (an upper bound: the teacher cache "
        "serves its features after the first epochs); if over budget, shorten the students' train.steps "
        "in the paper_*_student.yaml configs before the first run (records of another config are not reused)",
    }


def check_schema(doc: Mapping[str, Any]) -> None:
    """The issue's Output schema, field by field (what external checks read); raises on a difference."""
    problems = []
    if set(doc["protocol"]) != {"select_on", "report_on", "selection_seeds", "confirmation_seeds"}:
        problems.append(f"protocol keys {sorted(doc['protocol'])}")
    for task, pair in doc["pairs"].items():
        if set(pair) != {"teacher", "student"} or set(pair["teacher"]) != {
            "backbone",
            "pretrained",
            "metric",
            "val",
            "test",
        }:
            problems.append(f"pairs.{task} keys")
        if set(pair["student"]) != {"backbone", "pretrained"}:
            problems.append(f"pairs.{task}.student keys")
    problems += [f"runs row keys {sorted(r)}" for r in doc["runs"] if set(r) != set(RUN_FIELDS)][:1]
    problems += [f"summary row keys {sorted(r)}" for r in doc["summary"] if set(r) != set(SUMMARY_FIELDS)][:1]
    if problems:
        raise ValueError("paper_regime output schema: " + "; ".join(problems))


# ----------------------------------------------------------------------------- main
def smoke_settings(tmp: Path) -> Settings:
    """Tiny everything, in a temp dir: the whole pipeline in a few minutes, for checking it runs."""
    return Settings(
        out=tmp / "out",
        records=tmp / "records",
        extra=(
            "train.steps=3",
            "train.log_every=1",
            "train.checkpoint_every=3",
            "data.limit_train=48",
            "data.limit_val=16",
            "data.check_samples=4",
            "data.batch_size=4",
        ),
        scale_batches=1,
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(DESIGNS), choices=list(DESIGNS))
    ap.add_argument(
        "--helper", action="store_true", help="a second worker: the same jobs from the other end, train only"
    )
    ap.add_argument("--plan", action="store_true", help="print the design and the estimated compute, then stop")
    ap.add_argument(
        "--docs", action="store_true", help="write docs/results.json 'paper_regime' + 'avatars', table, plot"
    )
    ap.add_argument(
        "--smoke", action="store_true", help="the whole pipeline with tiny schedules and 2 seeds in a temp dir"
    )
    ap.add_argument("--keep", action="store_true", help="with --smoke: keep the temp dir (its path is printed)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("avatarkd").setLevel(logging.WARNING)
    designs = {t: DESIGNS[t] for t in args.tasks}
    smoke_dir = Path(tempfile.mkdtemp(prefix="paper_regime_smoke_")) if args.smoke else None
    settings = smoke_settings(smoke_dir) if smoke_dir else Settings()
    os.environ["TORCH_HOME"] = str(settings.torch_home)
    from benchmarks import pretrained

    for name in {d.teacher_file for d in designs.values()} | {"mobilenet_v2"}:
        if not pretrained.available(name, settings.weights_cache):
            raise SystemExit(f"{name}: not fetched; run python benchmarks/pretrained.py --fetch --verify first")
    if args.plan:
        print(json.dumps(plan(designs, settings), indent=1))
        return
    sel, conf = (SELECTION_SEEDS, CONFIRMATION_SEEDS) if not args.smoke else ((0, 1), (0, 1))
    real = RealBackend(designs, settings)
    t0 = time.perf_counter()
    res = run_study(
        designs,
        real.backend(),
        sel,
        conf,
        train_only=args.helper,
        reverse=args.helper,
        enforce_acceptance=not args.smoke,
    )
    if args.helper:
        return
    wall = {
        "this_call": round(time.perf_counter() - t0, 1),
        "training_sum": round(sum(real.wall.values()), 1),
        "teachers_training": round(sum(v for k, v in real.wall.items() if k.endswith("-teacher")), 1),
    }
    doc = payload(res, designs, sel, conf, real.causes, wall)
    text = table(res, designs)
    print(text)
    for lines in doc["answer"].values():
        print("\n".join(lines.values()))
    from avatarkd.atomic import atomic_write_json

    atomic_write_json(settings.out / "paper_regime.json", doc)
    if args.docs or args.smoke:
        docs = settings.out / "docs" if args.smoke else ROOT / "docs"
        avatars = avatars_tables(real, res, settings.out)
        write_docs(doc, avatars, text, docs)
        plot(res, docs / "paper_regime.png")
        print(f"wrote {docs / 'results.json'}, {docs / 'paper_regime_table.md'}, {docs / 'paper_regime.png'}")
    if smoke_dir is not None:
        check_schema(json.loads((settings.out / "docs" / "results.json").read_text())["paper_regime"])
        print(f"smoke: OK ({wall['this_call']:.0f} s); schema checked")
        if args.keep:
            print(f"smoke output kept in {smoke_dir}")
        else:
            shutil.rmtree(smoke_dir)


if __name__ == "__main__":
    main()
