"""The shipped classification pair, trained exactly as shipped, scored on its test split, timed.

``cls_teacher.yaml`` (ImageNet-pretrained MobileNetV2, 1000 steps) and then ``cls_akd.yaml`` (a
second pretrained MobileNetV2 distilled from it, KD on the logits with AKD, 600 steps), each with
the packaged settings and only ``output_dir`` (and the student's ``teacher.weights``) set; then
both models' top-1 on the test split (read after training, never used to choose anything). Run it
on quiet cores: the wall clock of each training is the number issue 21 asks for (< 5 min each).

    python benchmarks/shipped_cls.py            # docs/bench/shipped_cls.json
    python benchmarks/shipped_cls.py --quick    # a check that it runs (6 steps each, temp output)
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd.atomic import atomic_write_json  # noqa: E402
from avatarkd.config import TrainConfig, apply_overrides, validate  # noqa: E402
from avatarkd.demo import packaged_config  # noqa: E402
from avatarkd.runner import evaluate, train  # noqa: E402
from benchmarks._study import alone_on_test  # noqa: E402

OUT = ROOT / "benchmarks" / "out" / "shipped_cls"
QUICK = ["train.steps=6", "train.log_every=2", "data.limit_train=64", "data.limit_val=32", "train.plots=false"]


def _cfg(name: str, overrides: list[str]) -> TrainConfig:
    return validate(TrainConfig, apply_overrides(packaged_config(name), overrides), name)


def top1_on_test(name: str, run_dir: Path, extra: list[str]) -> float:
    """Top-1 of a finished run's weights on the test split (the model alone, no teacher)."""
    return float(evaluate(_cfg(name, [*extra, *alone_on_test(run_dir)]))["top1"])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="6 steps each in a temp dir; writes nothing in docs/")
    args = ap.parse_args()
    out = Path(tempfile.mkdtemp(prefix="shipped_cls_")) if args.quick else OUT
    extra = QUICK if args.quick else []
    rows: dict[str, Any] = {}
    teacher_dir = out / "teacher"
    for role, name, run_dir, over in (
        ("teacher", "cls_teacher.yaml", teacher_dir, []),
        ("akd_student", "cls_akd.yaml", out / "akd_student", [f"teacher.weights={teacher_dir / 'student.pt'}"]),
    ):
        if run_dir.exists():  # trained from scratch every time: the wall clock is the point
            shutil.rmtree(run_dir)
        result = train(_cfg(name, [*extra, *over, f"output_dir={run_dir}"]))
        rows[role] = {
            "config": name,
            "steps": result["step"],
            "train_wall_seconds": round(result["wall_seconds"], 1),
            "val_top1": round(result["metrics"]["top1"], 4),
            "test_top1": round(top1_on_test(name, run_dir, extra), 4),
        }
        print(
            f"{role}: {name}, {rows[role]['steps']} steps in {rows[role]['train_wall_seconds'] / 60:.1f} min; "
            f"top-1 val {rows[role]['val_top1']:.4f}, test {rows[role]['test_top1']:.4f}"
        )
    doc = {
        "when": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "quick": args.quick,
        "runs": rows,
    }
    if args.quick:
        shutil.rmtree(out)
        return
    atomic_write_json(out / "shipped_cls.json", doc)
    atomic_write_json(ROOT / "docs" / "bench" / "shipped_cls.json", doc)


if __name__ == "__main__":
    main()
