"""Training-step cost of AKD over its base loss, on a detection and a segmentation student.

One process times every arm of a task side by side: the same student, teacher, batch and base
loss, with distillation as the plain base loss (``base``) or as AKD with K = 1, 4, 8 avatars
(dropout 0.1, uncertainty ``variance``), AKD K=4 forced onto the explicit K-avatar path (``AKD K=4
explicit``: the code path before the exact dropout forms, measured in the same run), and the base
loss with the teacher's features read from the on-disk cache instead of running the teacher
(``base, teacher cached``). Target (issue 12): AKD K=4 <= 1.05x base on both detection and
segmentation. Steps are interleaved round-robin over the arms so that
machine noise hits all of them alike; each arm reports its median step time and the ratio to
``base``. Peak memory of a step: CUDA's allocator peak on GPU; on CPU, which keeps no allocator
peak, the resident-set growth during the step (sampled every millisecond by a thread, after
``malloc_trim`` returns freed memory to the OS, so each step starts from the same floor).

    python benchmarks/overhead.py                 # all settings, print the table
    python benchmarks/overhead.py --docs          # and merge the ratios into docs/results.json
    python benchmarks/overhead.py --tasks detection --repeats 1 --warmup 1   # a quick check that it runs

On CUDA each step is timed between synchronised CUDA events.
"""

from __future__ import annotations

import argparse
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
from avatarkd.config import TrainConfig, apply_overrides, validate  # noqa: E402
from avatarkd.demo import packaged_config  # noqa: E402
from avatarkd.engine import Trainer  # noqa: E402
from avatarkd.runner import build_trainer  # noqa: E402
from avatarkd.tasks import make_task  # noqa: E402
from benchmarks._timing import RssPeak, sync, timed  # noqa: E402

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
ARMS = (
    {"base": ["distill.akd.enabled=false"]}
    | {
        str(k): [f"distill.akd.num_avatars={k}", "distill.akd.p=0.1", "distill.akd.uncertainty=variance"]
        for k in (1, 4, 8)
    }
    | {
        "4x": ["distill.akd.num_avatars=4", "distill.akd.p=0.1", "distill.akd.uncertainty=variance"],  # explicit path
        "base+cache": ["distill.akd.enabled=false"],
    }
)  # + a teacher-feature cache that holds the batch
LABELS = {"base": "base", "base+cache": "base, teacher cached", "4x": "AKD K=4 explicit"} | {
    str(k): f"AKD K={k}" for k in (1, 4, 8)
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


def time_task(task: str, repeats: int, warmup: int, device: str, workdir: Path, names: list[str]) -> dict[str, Any]:
    arms = {arm: build(task, arm, workdir, device) for arm in ARMS if arm in names}
    for trainer, batch in arms.values():
        for _ in range(warmup):
            trainer.train_step(batch)
    times: dict[str, list[float]] = {arm: [] for arm in arms}
    peaks: dict[str, float] = {}
    for _ in range(repeats):
        for arm, (trainer, batch) in arms.items():
            times[arm].append(timed(lambda: trainer.train_step(batch), device))
    for _ in range(3):  # memory in separate passes: the sampling thread would slow the timed steps
        for arm, (trainer, batch) in arms.items():
            if device.startswith("cuda"):
                torch.cuda.reset_peak_memory_stats()
            with RssPeak() as rss:
                trainer.train_step(batch)
                sync(device)
            peak = torch.cuda.max_memory_allocated() / 2**20 if device.startswith("cuda") else rss.mib
            peaks[arm] = max(peaks.get(arm, 0.0), peak)
    med = {arm: statistics.median(v) for arm, v in times.items()}
    batch_size = arms["base"][0].batch_size
    return {
        "batch_size": batch_size,
        "median_s": med,
        "all_s": times,
        "ratio_to_base": {arm: med[arm] / med["base"] for arm in arms},
        "peak_mib": peaks,
        "peak_method": "cuda max_memory_allocated" if device.startswith("cuda") else "RSS growth during the step",
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", nargs="+", default=list(CONFIGS), choices=list(CONFIGS))
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--arms", nargs="+", default=list(ARMS), choices=list(ARMS))
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "overhead.json")
    ap.add_argument("--docs", action="store_true", help="merge the ratios into docs/results.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    report: dict[str, Any] = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "device": args.device,
        "machine": platform.processor() or platform.machine(),
        "repeats": args.repeats,
        "command": " ".join(sys.argv),
        "tasks": {},
    }
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            report["tasks"][task] = time_task(
                task,
                args.repeats,
                args.warmup,
                args.device,
                Path(tmp),
                sorted(set(args.arms) | {"base"}, key=list(ARMS).index),
            )
    print(
        f"\nstudent training step, {args.device}, {report['threads']} threads, median of {args.repeats} "
        f"(interleaved), config batch size"
    )
    print(f"{'task':<22} {'arm':<21} {'median ms':>9} {'x base':>7} {'peak MiB':>9}")
    for task, res in report["tasks"].items():
        mem = res["peak_mib"]
        for arm in res["median_s"]:
            print(
                f"{task:<22} {LABELS[arm]:<21} {1000 * res['median_s'][arm]:>9.1f} {res['ratio_to_base'][arm]:>7.3f} "
                f"{mem[arm]:>9.0f}"
            )
    atomic_write_json(args.out, report)
    if args.docs:
        path = ROOT / "docs" / "results.json"
        path.parent.mkdir(exist_ok=True)
        results = json.loads(path.read_text()) if path.is_file() else {}
        results.setdefault("overhead", {})
        extra = results.setdefault("extra", {})
        for task, res in report["tasks"].items():
            ratios = {k: round(v, 4) for k, v in res["ratio_to_base"].items() if k not in ("base", "base+cache", "4x")}
            if "4x" in res["ratio_to_base"]:
                extra.setdefault("overhead_explicit_path", {})[task] = round(res["ratio_to_base"]["4x"], 4)
            if task in ("segmentation", "detection"):
                results["overhead"][task] = ratios
            else:
                extra.setdefault("overhead_other", {})[task] = ratios
            if "base+cache" in res["ratio_to_base"]:
                extra.setdefault("teacher_cache_step_ratio", {})[task] = round(res["ratio_to_base"]["base+cache"], 4)
        extra["overhead_run"] = {k: report[k] for k in ("date", "torch", "threads", "device", "repeats", "command")}
        results.setdefault("runs", [])
        atomic_write_json(path, results)


if __name__ == "__main__":
    main()
