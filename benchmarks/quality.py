"""Does AKD beat its base loss? Student alone vs base distillation vs AKD, several seeds, bundled data.

For each task: a teacher is trained once (cached); then, with the same schedule and data, the
student alone, each base loss alone (``base``), each base loss with reference-compatible AKD
(``akd-reference``: K=1, dropout 0.1, uncertainty ``batchnorm``) and with our defaults (``akd``:
K=4, dropout 0.1, uncertainty ``variance``), over several seeds. Ablations vary one AKD setting
at a time around our defaults on one base loss.

    python benchmarks/quality.py                      # everything (hours on 2 CPU cores)
    python benchmarks/quality.py --tasks segmentation --seeds 0 1 2 --steps segmentation=200 --no-ablations

Finished runs are reused (their metrics.json), so an interrupted study continues where it stopped.
Distilled runs share one on-disk cache of the frozen teacher's features per task
(``<out>/cache/<task>_features``): the teacher runs once per distinct input image over the whole
study instead of once per step of every run.
Writes ``benchmarks/out/quality.json``, and with ``--docs`` merges the runs into
``docs/results.json`` and redraws ``docs/quality_*.png``.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd.config import TrainConfig, apply_overrides, validate  # noqa: E402
from avatarkd.demo import packaged_config  # noqa: E402
from avatarkd.engine.trainer import NonFiniteLossError  # noqa: E402
from avatarkd.runner import train  # noqa: E402
from benchmarks._stats import mean_std  # noqa: E402

log = logging.getLogger("quality")

# Students are small on purpose: the teacher/student gap is what distillation can close.
TASKS: dict[str, dict[str, Any]] = {
    "segmentation": {
        "teacher": ("seg_teacher.yaml", []),
        "student": ("seg_student.yaml", []),
        "distill": "seg_akd.yaml",
        "bases": {"cwd": {"tau": 1.0}, "mgd": {"alpha": 2.0e-5}, "mse": {}},
        "weights": {"cwd": 3.0, "mgd": 1.0, "mse": 1.0e-4},
        "metric": "miou",
    },
    "detection": {
        "teacher": ("det_teacher.yaml", []),
        "student": ("det_akd.yaml", ["distill=null", "teacher=null"]),
        "distill": "det_akd.yaml",
        "bases": {"cwd": {"tau": 1.0}, "mgd": {"alpha": 2.0e-5}, "mse": {}, "pkd": {}},
        "weights": {"cwd": 2.0, "mgd": 1.0, "mse": 1.0e-3, "pkd": 1.0},
        "metric": "map",
    },
}
ARMS = {
    "base": ["distill.akd.enabled=false"],
    "akd-reference": [
        "distill.akd.num_avatars=1",
        "distill.akd.p=0.1",
        "distill.akd.perturbation=dropout",
        "distill.akd.uncertainty=batchnorm",
    ],
    "akd": [
        "distill.akd.num_avatars=4",
        "distill.akd.p=0.1",
        "distill.akd.perturbation=dropout",
        "distill.akd.uncertainty=variance",
    ],
}
ABLATIONS = {
    "num_avatars": [1, 2, 4, 8],
    "p": [0.05, 0.1, 0.2],
    "perturbation": ["dropout", "channel_dropout", "gaussian", "multiplicative"],
    "uncertainty": ["variance", "relative", "batchnorm", "none"],
}


def _cfg(name: str, overrides: list[str]) -> TrainConfig:
    return validate(TrainConfig, apply_overrides(packaged_config(name), overrides), name)


def _run(name: str, overrides: list[str], out: Path) -> dict[str, Any]:
    """Train (or reuse) one run; a run that diverges counts as metric 0 and is logged, not fatal."""
    done = out / "metrics.json"
    if done.is_file():
        return json.loads(done.read_text())
    try:
        return train(_cfg(name, overrides + [f"output_dir={out}", "train.plots=false"]), resume=True)
    except NonFiniteLossError as err:
        log.warning("%s diverged: %s", out.name, err)
        result = {"metrics": {"miou": 0.0, "map": 0.0}, "wall_seconds": 0.0, "diverged": str(err)}
        done.write_text(json.dumps(result))
        return result


def distill_overrides(spec: dict[str, Any], base: str) -> list[str]:
    """Point 0 (the feature point) uses ``base``; the segmentation logits point is dropped so the
    comparison isolates the base loss."""
    kwargs = json.dumps(spec["bases"][base])
    return [
        f"distill.points=[{{name: feat, student: {'backbone.body' if spec['metric'] == 'miou' else 'backbone.fpn'}, "
        f"teacher: {'backbone' if spec['metric'] == 'miou' else 'backbone.fpn'}, "
        f"{'key: out, ' if spec['metric'] == 'miou' else ''}loss: {base}, loss_kwargs: {kwargs}, "
        f"weight: {spec['weights'][base]}}}]"
    ]


def _ablation_dir(task_out: Path, base: str, key: str, value: Any, seed: int) -> Path:
    """The ``akd`` arm already is the ablation at our default value: reuse it, do not train it twice."""
    if f"distill.akd.{key}={value}" in ARMS["akd"]:
        return task_out / f"{base}_akd_s{seed}"
    return task_out / f"ablation_{key}_{value}_s{seed}"


def study(
    tasks: list[str],
    seeds: list[int],
    steps: dict[str, int],
    out: Path,
    ablations: list[str],
    teachers: dict[str, Path] | None = None,
    bases: list[str] | None = None,
    ablation_seeds: list[int] | None = None,
    ablation_keys: dict[str, list[str]] | None = None,
    extra: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Every run of the study, trained or reused; ``extra`` overrides go to every student run."""
    runs: list[dict[str, Any]] = []
    for task in tasks:
        sched = ([f"train.steps={steps[task]}"] if task in steps else []) + list(extra or [])
        spec = TASKS[task]
        metric = spec["metric"]
        tname, textra = spec["teacher"]
        teacher_dir = (teachers or {}).get(task) or out / "cache" / f"{task}_teacher"
        t0 = time.perf_counter()
        teacher = _run(tname, textra + ["seed=0"], teacher_dir)  # reused when finished
        log.info("%s teacher %s=%.4f (%.0f s)", task, metric, teacher["metrics"][metric], time.perf_counter() - t0)
        runs.append(
            {
                "task": task,
                "base": "-",
                "arm": "teacher",
                "seed": 0,
                "metric": metric,
                "value": teacher["metrics"][metric],
                "wall_seconds": teacher["wall_seconds"],
            }
        )
        weights = [
            f"teacher.weights={teacher_dir / 'student.pt'}",
            f"distill.teacher_cache={out / 'cache' / f'{task}_features'}",
        ]
        for seed in seeds:
            sname, sextra = spec["student"]
            r = _run(sname, sextra + sched + [f"seed={seed}"], out / task / f"student_s{seed}")
            runs.append(
                {
                    "task": task,
                    "base": "-",
                    "arm": "student",
                    "seed": seed,
                    "metric": metric,
                    "value": r["metrics"][metric],
                    "wall_seconds": r["wall_seconds"],
                }
            )
            for base in [b for b in spec["bases"] if not bases or b in bases]:
                for arm, arm_over in ARMS.items():
                    over = sched + weights + [f"seed={seed}"] + distill_overrides(spec, base) + arm_over
                    r = _run(spec["distill"], over, out / task / f"{base}_{arm}_s{seed}")
                    runs.append(
                        {
                            "task": task,
                            "base": base,
                            "arm": arm,
                            "seed": seed,
                            "metric": metric,
                            "value": r["metrics"][metric],
                            "wall_seconds": r["wall_seconds"],
                        }
                    )
                    log.info("%s %s %s seed %d: %s=%.4f", task, base, arm, seed, metric, r["metrics"][metric])
        if task in ablations:
            base = "cwd"  # seed-major: a study cut short still has every setting on its first seeds
            for seed in seeds if ablation_seeds is None else ablation_seeds:
                for key, values in ABLATIONS.items():
                    if key not in (ablation_keys or {}).get(task, ABLATIONS):
                        continue
                    for value in values:
                        over = (
                            sched
                            + weights
                            + [f"seed={seed}"]
                            + distill_overrides(spec, base)
                            + ARMS["akd"]
                            + [f"distill.akd.{key}={value}"]
                        )
                        r = _run(spec["distill"], over, _ablation_dir(out / task, base, key, value, seed))
                        runs.append(
                            {
                                "task": task,
                                "base": base,
                                "arm": f"ablation:{key}={value}",
                                "seed": seed,
                                "metric": metric,
                                "value": r["metrics"][metric],
                                "wall_seconds": r["wall_seconds"],
                            }
                        )
    return runs


def _parse_steps(items: list[str]) -> dict[str, int]:
    out = {}
    for item in items:
        task, _, n = item.partition("=")
        if task not in TASKS or not n.isdigit():
            raise SystemExit(f"--steps: expected TASK=N with TASK in {list(TASKS)}, got {item!r}")
        out[task] = int(n)
    return out


def _parse_ablation_keys(items: list[str]) -> dict[str, list[str]]:
    out = {}
    for item in items:
        task, _, keys = item.partition("=")
        names = keys.split(",")
        if task not in TASKS or not all(k in ABLATIONS for k in names):
            raise SystemExit(
                f"--ablation-keys: expected TASK=KEY[,KEY] with TASK in {list(TASKS)} and KEY in "
                f"{list(ABLATIONS)}, got {item!r}"
            )
        out[task] = names
    return out


def table(runs: list[dict[str, Any]]) -> str:
    """Mean ± std (x100) per arm, and the per-seed paired difference of each AKD arm to its base."""
    lines = []
    for task in dict.fromkeys(r["task"] for r in runs):
        rs = [r for r in runs if r["task"] == task]
        metric = rs[0]["metric"]
        teacher = [r["value"] for r in rs if r["arm"] == "teacher"]
        student = [r["value"] for r in rs if r["arm"] == "student"]
        lines += [
            f"\n### {task} ({metric} x 100; seeds: {sorted({r['seed'] for r in rs if r['arm'] == 'student'})})",
            f"teacher {mean_std(teacher)}, student alone {mean_std(student)}",
            "",
            "| base loss | base | akd-reference | akd | akd-ref - base (paired) | akd - base (paired) | akd-ref > base "
            "| akd > base |",
            "|---|---|---|---|---|---|---|---|",
        ]
        for base in dict.fromkeys(r["base"] for r in rs if r["arm"] in ARMS):
            by = {arm: {r["seed"]: r["value"] for r in rs if r["base"] == base and r["arm"] == arm} for arm in ARMS}
            seeds = sorted(set(by["base"]) & set(by["akd"]) & set(by["akd-reference"]))
            d_ref = [by["akd-reference"][s] - by["base"][s] for s in seeds]
            d_akd = [by["akd"][s] - by["base"][s] for s in seeds]
            lines.append(
                f"| {base} | {mean_std(list(by['base'].values()))} | {mean_std(list(by['akd-reference'].values()))} "
                f"| {mean_std(list(by['akd'].values()))} | {mean_std(d_ref)} | {mean_std(d_akd)} "
                f"| {sum(d > 0 for d in d_ref)}/{len(seeds)} | {sum(d > 0 for d in d_akd)}/{len(seeds)} |"
            )
        abl = [r for r in rs if r["arm"].startswith("ablation:")]
        if abl:
            cwd_alone = {r["seed"]: r["value"] for r in rs if r["base"] == "cwd" and r["arm"] == "base"}
            lines += [
                "",
                "| ablation (cwd + AKD, one setting changed from K=4, dropout, p=0.1, variance) | value "
                "| - cwd alone (paired) | seeds |",
                "|---|---|---|---|",
            ]
            for arm in dict.fromkeys(r["arm"] for r in abl):
                by_seed = {r["seed"]: r["value"] for r in abl if r["arm"] == arm}
                diff = [v - cwd_alone[s] for s, v in by_seed.items() if s in cwd_alone]
                lines.append(
                    f"| {arm.split(':', 1)[1]} | {mean_std(list(by_seed.values()))} | {mean_std(diff)} "
                    f"| {len(by_seed)} |"
                )
    return "\n".join(lines)


def plot(runs: list[dict[str, Any]], out_png: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    fig = Figure(figsize=(6 * len(tasks), 4))
    FigureCanvasAgg(fig)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        rs = [r for r in runs if r["task"] == task and not r["arm"].startswith("ablation")]
        groups = [("student", "-")] + [
            (arm, b) for b in dict.fromkeys(r["base"] for r in rs if r["arm"] in ARMS) for arm in ARMS
        ]
        for j, (arm, base) in enumerate(groups):
            vals = [100 * r["value"] for r in rs if r["arm"] == arm and r["base"] == base]
            color = {"student": "gray", "base": "C0", "akd-reference": "C1", "akd": "C2"}[arm]
            ax.scatter([j] * len(vals), vals, color=color, s=18)
            if vals:
                ax.hlines(statistics.mean(vals), j - 0.3, j + 0.3, color=color)
        teacher = [100 * r["value"] for r in runs if r["task"] == task and r["arm"] == "teacher"]
        if teacher:
            ax.axhline(teacher[0], color="k", ls="--", lw=1, label="teacher")
            ax.legend(fontsize=8)
        ax.set_xticks(range(len(groups)), [f"{b}\n{a}" if b != "-" else a for a, b in groups], fontsize=7, rotation=60)
        ax.set_ylabel(f"{rs[0]['metric']} x 100")
        ax.set_title(task)
        ax.grid(alpha=0.3, axis="y")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)


def plot_paired(runs: list[dict[str, Any]], out_png: Path) -> bool:
    """Per task: each AKD arm minus its base loss, seed by seed (dots) and on average (bar)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    tasks = [
        t for t in dict.fromkeys(r["task"] for r in runs) if any(r["task"] == t and r["arm"] == "akd" for r in runs)
    ]
    if not tasks:
        return False
    fig = Figure(figsize=(5 * len(tasks), 3.6))
    FigureCanvasAgg(fig)
    for i, task in enumerate(tasks):
        ax = fig.add_subplot(1, len(tasks), i + 1)
        rs = [r for r in runs if r["task"] == task]
        bases = list(dict.fromkeys(r["base"] for r in rs if r["arm"] == "akd"))
        for j, base in enumerate(bases):
            by = {
                arm: {r["seed"]: r["value"] for r in rs if r["base"] == base and r["arm"] == arm}
                for arm in ("base", "akd-reference", "akd")
            }
            for dx, arm, color in ((-0.18, "akd-reference", "C1"), (0.18, "akd", "C2")):
                diff = [100 * (v - by["base"][s]) for s, v in by[arm].items() if s in by["base"]]
                if diff:
                    ax.bar(
                        j + dx,
                        statistics.mean(diff),
                        width=0.32,
                        color=color,
                        alpha=0.35,
                        label=arm if j == 0 else None,
                    )
                    ax.scatter([j + dx] * len(diff), diff, color=color, s=14, zorder=3)
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xticks(range(len(bases)), bases)
        ax.set_ylabel(f"AKD - base, {rs[0]['metric']} x 100")
        ax.set_title(f"{task}: paired per seed")
        ax.grid(alpha=0.3, axis="y")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return True


def _ablated_key(arm: str) -> str:
    """``"ablation:p=0.2"`` -> ``"p"``."""
    return arm.split(":", 1)[1].split("=")[0]


def plot_ablations(runs: list[dict[str, Any]], out_png: Path) -> bool:
    """A row per task, a panel per ablated setting: every seed's value, the mean, and CWD alone."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    abl = [r for r in runs if r["arm"].startswith("ablation:")]
    if not abl:
        return False
    tasks = list(dict.fromkeys(r["task"] for r in abl))
    ncols = max(len({_ablated_key(r["arm"]) for r in abl if r["task"] == t}) for t in tasks)
    fig = Figure(figsize=(3.2 * ncols, 3.4 * len(tasks)))
    FigureCanvasAgg(fig)
    for row, task in enumerate(tasks):
        rows = [r for r in abl if r["task"] == task]
        keys = list(dict.fromkeys(_ablated_key(r["arm"]) for r in rows))
        cwd_alone = [100 * r["value"] for r in runs if r["task"] == task and r["base"] == "cwd" and r["arm"] == "base"]
        for i, key in enumerate(keys):
            ax = fig.add_subplot(len(tasks), ncols, row * ncols + i + 1)
            arms = [a for a in dict.fromkeys(r["arm"] for r in rows) if _ablated_key(a) == key]
            for j, arm in enumerate(arms):
                vals = [100 * r["value"] for r in rows if r["arm"] == arm]
                ax.scatter([j] * len(vals), vals, color="C2", s=16)
                ax.hlines(statistics.mean(vals), j - 0.3, j + 0.3, color="C2")
            if cwd_alone:
                ax.axhline(statistics.mean(cwd_alone), color="C0", ls="--", lw=1, label="cwd alone (mean)")
                ax.legend(fontsize=7)
            ax.set_xticks(range(len(arms)), [a.split("=", 1)[1] for a in arms], fontsize=7, rotation=30)
            ax.set_title(f"{task}: {key}", fontsize=9)
            ax.grid(alpha=0.3, axis="y")
            if i == 0:
                ax.set_ylabel(f"{rows[0]['metric']} x 100")
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    return True


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument(
        "--steps",
        nargs="+",
        default=[],
        metavar="TASK=N",
        help="student schedule per task, e.g. detection=200 (default: the config's)",
    )
    ap.add_argument(
        "--ablations",
        nargs="*",
        default=["segmentation"],
        choices=list(TASKS),
        help="tasks to run the ablations on (default: segmentation)",
    )
    ap.add_argument("--no-ablations", dest="ablations", action="store_const", const=[])
    ap.add_argument("--ablation-seeds", nargs="+", type=int, help="seeds of the ablation runs (default: --seeds)")
    ap.add_argument(
        "--ablation-keys",
        nargs="+",
        default=[],
        metavar="TASK=KEY[,KEY]",
        help="only these ablated settings on that task, e.g. detection=uncertainty (default: all)",
    )
    ap.add_argument("--bases", nargs="+", help="only these base losses (default: all of the task's)")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "quality")
    ap.add_argument(
        "--seg-teacher", type=Path, help="reuse a finished segmentation teacher run (e.g. runs/demo/teacher)"
    )
    ap.add_argument("--det-teacher", type=Path, help="reuse a finished detection teacher run")
    ap.add_argument("--docs", action="store_true", help="merge into docs/results.json and draw docs/quality.png")
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    logging.getLogger("avatarkd").setLevel(logging.WARNING)
    start = time.perf_counter()
    teachers = {"segmentation": args.seg_teacher, "detection": args.det_teacher}
    runs = study(
        args.tasks,
        args.seeds,
        _parse_steps(args.steps),
        args.out,
        args.ablations,
        {k: v for k, v in teachers.items() if v is not None},
        args.bases,
        args.ablation_seeds,
        _parse_ablation_keys(args.ablation_keys),
    )
    wall = time.perf_counter() - start
    text = table(runs)
    print(text)
    compute = sum(r["wall_seconds"] for r in runs)
    print(
        f"\nwall clock of this invocation: {wall / 60:.1f} min; training time of all {len(runs)} runs "
        f"(reused ones included): {compute / 60:.1f} min"
    )
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "quality.json").write_text(
        json.dumps(
            {
                "runs": runs,
                "table": text,
                "wall_seconds": wall,
                "training_seconds_all_runs": compute,
                "command": " ".join(sys.argv),
            },
            indent=2,
        )
    )
    if args.docs:
        docs = ROOT / "docs"
        docs.mkdir(exist_ok=True)
        results_path = docs / "results.json"
        results = json.loads(results_path.read_text()) if results_path.is_file() else {}
        keep = [r for r in results.get("runs", []) if r["task"] not in args.tasks]
        main_runs = [
            {k: r[k] for k in ("task", "base", "arm", "seed", "metric", "value")}
            for r in runs
            if r["arm"] in ("student", "base", "akd-reference", "akd")
        ]
        results["runs"] = keep + main_runs
        results.setdefault("extra", {})
        results["extra"].update(
            {f"{t}_teacher": [r for r in runs if r["task"] == t and r["arm"] == "teacher"] for t in args.tasks}
        )
        results["extra"]["ablations"] = [r for r in runs if r["arm"].startswith("ablation")] or results["extra"].get(
            "ablations", []
        )
        results_path.write_text(json.dumps(results, indent=2))
        plot(runs, docs / "quality.png")
        plot_paired(runs, docs / "quality_paired.png")
        plot_ablations(runs, docs / "ablations.png")
        (docs / "quality_table.md").write_text(
            text + f"\n\nCommand: `{' '.join(sys.argv)}`; training time of all runs {compute / 60:.1f} min "
            f"(this invocation {wall / 60:.1f} min).\n"
        )


if __name__ == "__main__":
    main()
