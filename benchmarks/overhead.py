"""Training-step cost of AKD over its base loss, on a detection and a segmentation student.

One process times every arm of a task side by side: the same student, teacher, batch and base
loss, with distillation as the plain base loss (``base``) or as AKD (dropout 0.1) in the default
uncertainty mode (read from ``AKDConfig``, never written here) with K = 1, 4, 8 avatars and in
every mode the study runs (``relative``, ``batchnorm``) at K = 1 and 4; AKD K=4 in the default mode
forced onto the explicit K-avatar path (``4x``: the code path before the exact dropout forms,
measured in the same run); and the base loss with the teacher's features read from the on-disk
cache instead of running the teacher (``base+cache``). Target (issue 19): AKD K=4 <= 1.05x base on
detection and on the demo's segmentation setting (CWD + KD on full-resolution logits).

Every thread count of ``--threads`` (default 1 and 2) times all arms; steps are interleaved
round-robin over the arms so that machine noise hits all of them alike, freed memory is reused
(``_timing.tune_allocator``) and every arm is warmed up; each arm reports its median step time,
the median of its per-round ratios to ``base`` and their quartiles. Peak memory of a step: CUDA's
allocator peak on GPU; on CPU, the resident-set growth during the step (sampled every
millisecond by a thread), measured with ``--memory`` in a separate pass.

    python benchmarks/overhead.py                 # all settings, print the table
    python benchmarks/overhead.py --docs          # and merge the ratios into docs/results.json
    python benchmarks/overhead.py --quick         # a quick check that it runs (detection, 1 round)

``--docs`` writes ``overhead`` (the default mode's K ratios at the first thread count, as before),
``extra.overhead_modes`` (every mode and thread count) and ``extra.overhead_run`` (date, threads,
``uncertainty``: the mode the ``overhead`` ratios were measured in, ...). On CUDA each step is
timed between synchronised CUDA events.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging
import platform
import statistics
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd import AvatarLoss  # noqa: E402
from avatarkd.atomic import atomic_write_json  # noqa: E402
from avatarkd.config import AKDConfig, TrainConfig, apply_overrides, validate  # noqa: E402
from avatarkd.demo import packaged_config  # noqa: E402
from avatarkd.engine import Trainer  # noqa: E402
from avatarkd.runner import build_trainer  # noqa: E402
from avatarkd.tasks import make_task  # noqa: E402
from benchmarks._timing import RssPeak, paired_ratios, summary, sync, timed, tune_allocator  # noqa: E402

# name -> (packaged config, overrides). "segmentation" is the demo's setting (CWD on the backbone +
# KD on full-resolution logits); "segmentation-features" is the quality study's (CWD on the backbone only).
CONFIGS: dict[str, tuple[str, list[str]]] = {
    "segmentation": ("seg_akd.yaml", []),
    "segmentation-features": (
        "seg_akd.yaml",
        ["distill.points=[{name: feat, student: backbone.body, teacher: backbone, key: out, loss: cwd, weight: 3.0}]"],
    ),
    "detection": ("det_akd.yaml", []),
}
DEFAULT_MODE: str = AKDConfig.model_fields["uncertainty"].default
STUDY_MODES = ("relative", "batchnorm")  # the AKD modes the study trains (benchmarks/realistic.py)


def _akd(k: int, mode: str) -> list[str]:
    return [f"distill.akd.num_avatars={k}", "distill.akd.p=0.1", f"distill.akd.uncertainty={mode}"]


# arm -> overrides. "K" alone is the default mode; "K:mode" another mode the study runs.
ARMS: dict[str, list[str]] = (
    {"base": ["distill.akd.enabled=false"]}
    | {str(k): _akd(k, DEFAULT_MODE) for k in (1, 4, 8)}
    | {f"{k}:{mode}": _akd(k, mode) for mode in STUDY_MODES if mode != DEFAULT_MODE for k in (1, 4)}
    | {"4x": _akd(4, DEFAULT_MODE), "base+cache": ["distill.akd.enabled=false"]}  # 4x: explicit path
)  # base+cache: + a teacher-feature cache that holds the batch
LABELS = {"base": "base", "base+cache": "base, teacher cached", "4x": f"AKD K=4 {DEFAULT_MODE} explicit"} | {
    arm: f"AKD K={arm.split(':')[0]} {arm.split(':')[1] if ':' in arm else DEFAULT_MODE}"
    for arm in ARMS
    if arm[0].isdigit() and arm != "4x"
}


def build(task: str, arm: str, workdir: Path, device: str) -> tuple[Trainer, Any]:
    """A Trainer for one arm, with a random teacher (cost does not depend on the teacher's weights)."""
    name, extra = CONFIGS[task]
    raw = apply_overrides(packaged_config(name), extra)
    teacher_weights = workdir / f"{name}_teacher.pt"
    if not teacher_weights.exists():
        cfg = validate(TrainConfig, apply_overrides(json.loads(json.dumps(raw)), ["distill=null", "teacher=null"]))
        t = make_task(cfg)
        t.datasets(cfg.data)
        tcfg = cfg.model.model_copy(update=raw["teacher"] | {"weights": None})
        torch.save(t.build_model(tcfg).state_dict(), teacher_weights)
    over = ARMS[arm] + [
        f"teacher.weights={teacher_weights}",
        f"output_dir={workdir / task / arm}",
        f"train.device={device}",
        "data.limit_train=64",
        "data.limit_val=8",
    ]
    if arm == "base+cache":
        over.append(f"distill.teacher_cache={workdir / 'cache'}")  # filled by the warm-up steps
    trainer = build_trainer(validate(TrainConfig, apply_overrides(raw, over)), check_output=False)
    if arm == "4x":
        for loss in trainer.distiller.point_losses().values():
            if isinstance(loss, AvatarLoss):
                loss.fast_paths = False
    samples = [trainer.train_set[i] for i in range(trainer.batch_size)]
    return trainer, trainer.task.to_device(trainer.task.collate(samples), trainer.ctx.device)


def time_task(
    task: str, repeats: int, warmup: int, device: str, workdir: Path, names: list[str], threads: list[int], memory: bool
) -> dict[str, Any]:
    """Every arm of one task at every thread count: {threads: {median_s, ratio_to_base, ratio_spread, ...}}."""
    arms = {arm: build(task, arm, workdir, device) for arm in ARMS if arm in names}
    out: dict[str, Any] = {}
    for n in threads:
        torch.set_num_threads(n)
        for trainer, batch in arms.values():
            for _ in range(warmup):
                trainer.train_step(batch)
        times: dict[str, list[float]] = {arm: [] for arm in arms}
        for _ in range(repeats):
            for arm, (trainer, batch) in arms.items():
                times[arm].append(timed(functools.partial(trainer.train_step, batch), device))
        peaks: dict[str, float] = {}
        for _ in range(3 if memory else 0):  # memory in separate passes: the sampling thread slows the steps
            for arm, (trainer, batch) in arms.items():
                if device.startswith("cuda"):
                    torch.cuda.reset_peak_memory_stats()
                with RssPeak() as rss:
                    trainer.train_step(batch)
                    sync(device)
                peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else rss.mib
                peaks[arm] = max(peaks.get(arm, 0.0), peak)
        spread = {arm: summary(paired_ratios(times, arm, "base")) for arm in arms}
        out[str(n)] = {
            "batch_size": arms["base"][0].batch_size,
            "median_s": {arm: statistics.median(v) for arm, v in times.items()},
            "all_s": times,
            "ratio_to_base": {arm: r["median"] for arm, r in spread.items()},  # median of per-round ratios
            "ratio_spread": spread,
            "peak_mib": peaks,
            "peak_method": "cuda max_memory_allocated" if device.startswith("cuda") else "RSS growth during the step",
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--threads", type=int, nargs="+", default=[1, 2], help="torch thread counts, one pass each")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--memory", action="store_true", help="also measure each arm's peak memory (separate pass)")
    ap.add_argument("--no-allocator-tuning", action="store_true", help="leave glibc's malloc as it is")
    ap.add_argument("--quick", action="store_true", help="detection only, 1 round, 1 warm-up step: does it run?")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "overhead.json")
    ap.add_argument("--docs", action="store_true", help="merge the ratios into docs/results.json")
    args = ap.parse_args()
    if args.quick:
        args.tasks, args.repeats, args.warmup = ["detection"], 1, 1
    logging.basicConfig(level=logging.WARNING)
    tuned = False if args.no_allocator_tuning or args.device.startswith("cuda") else tune_allocator()
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": args.threads,
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "uncertainty": DEFAULT_MODE,
        "modes": list(dict.fromkeys((DEFAULT_MODE, *STUDY_MODES))),
        "allocator_tuned": tuned,
        "command": " ".join(sys.argv),
        "tasks": {},
    }
    names = sorted(set(args.arms) | {"base"}, key=list(ARMS).index)
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            report["tasks"][task] = time_task(
                task, args.repeats, args.warmup, args.device, Path(tmp), names, args.threads, args.memory
            )
    for n in args.threads:
        print(
            f"\nstudent training step, {args.device}, {n} thread(s), {args.repeats} interleaved rounds, config "
            f"batch size; x base = median of per-round ratios [quartiles]; default mode {DEFAULT_MODE!r}"
        )
        print(f"{'task':<22} {'arm':<28} {'median ms':>9} {'x base':>7} {'[p25, p75]':>15} {'peak MiB':>9}")
        for task, by_threads in report["tasks"].items():
            res = by_threads[str(n)]
            for arm in res["median_s"]:
                r = res["ratio_spread"][arm]
                mem = f"{res['peak_mib'][arm]:>9.0f}" if arm in res["peak_mib"] else f"{'-':>9}"
                print(
                    f"{task:<22} {LABELS[arm]:<28} {1000 * res['median_s'][arm]:>9.1f} {r['median']:>7.3f} "
                    f"{'[' + format(r['p25'], '.3f') + ', ' + format(r['p75'], '.3f') + ']':>15} {mem}"
                )
    atomic_write_json(args.out, report)
    if args.docs:
        write_docs(report)


def write_docs(report: dict[str, Any]) -> None:
    """Merge into docs/results.json: ``overhead`` (default mode, first thread count), every mode, the run."""
    path = ROOT / "docs" / "results.json"
    path.parent.mkdir(exist_ok=True)
    results = json.loads(path.read_text()) if path.is_file() else {}
    results.setdefault("overhead", {})
    extra = results.setdefault("extra", {})
    first = str(report["threads"][0])
    for task, by_threads in report["tasks"].items():
        res = by_threads[first]
        ratios = {
            k: round(v, 4) for k, v in res["ratio_to_base"].items() if k[0].isdigit() and ":" not in k and k != "4x"
        }
        if "4x" in res["ratio_to_base"]:
            extra.setdefault("overhead_explicit_path", {})[task] = round(res["ratio_to_base"]["4x"], 4)
        if task in ("segmentation", "detection"):
            results["overhead"][task] = ratios
        else:
            extra.setdefault("overhead_other", {})[task] = ratios
        if "base+cache" in res["ratio_to_base"]:
            extra.setdefault("teacher_cache_step_ratio", {})[task] = round(res["ratio_to_base"]["base+cache"], 4)
        modes: dict[str, Any] = {}
        for n, r in by_threads.items():
            for arm, value in r["ratio_to_base"].items():
                if arm[0].isdigit() and arm != "4x":
                    k, _, mode = arm.partition(":")
                    modes.setdefault(f"{n} threads", {}).setdefault(mode or report["uncertainty"], {})[k] = {
                        "ratio": round(value, 4),
                        "p25": round(r["ratio_spread"][arm]["p25"], 4),
                        "p75": round(r["ratio_spread"][arm]["p75"], 4),
                    }
        extra.setdefault("overhead_modes", {})[task] = modes
    run = {k: report[k] for k in ("date", "torch", "device", "repeats", "command", "uncertainty", "modes")}
    extra["overhead_run"] = run | {"threads": int(first), "all_threads": report["threads"]}
    results.setdefault("runs", [])
    atomic_write_json(path, results)


if __name__ == "__main__":
    main()
