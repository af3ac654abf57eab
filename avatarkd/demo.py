"""``avatarkd demo``: teacher, then student alone vs base distillation vs AKD, on the bundled data.

Segmentation on the Fashion-MNIST canvases: an FCN/ResNet-18 teacher and an
LR-ASPP/MobileNetV3-small student, same schedule and seed for every student arm.
"""

from __future__ import annotations

import json
import logging
import time
from importlib import resources
from pathlib import Path
from typing import Any

from . import __version__
from .atomic import atomic_write_json, atomic_write_text
from .config import TrainConfig, apply_overrides, load_yaml, validate
from .runner import train

log = logging.getLogger(__name__)


def packaged_config(name: str) -> dict[str, Any]:
    return load_yaml(Path(str(resources.files("avatarkd") / "configs" / name)))


def _config(name: str, overrides: list[str]) -> TrainConfig:
    return validate(TrainConfig, apply_overrides(packaged_config(name), overrides), name)


def run_demo(out: Path, quick: bool = False, seed: int = 0, record: Path | None = None) -> list[dict[str, Any]]:
    """Runs the four trainings (reusing a finished teacher) and prints the comparison table.

    Writes ``demo_table.md`` and ``demo.json`` (every arm's metrics, steps and wall clock) to
    ``out``; ``record`` writes the JSON there too (the README's table comes from ``docs/demo.json``).
    """
    scale = (
        ["train.steps=6", "train.log_every=2", "data.limit_train=64", "data.limit_val=32", "train.plots=false"]
        if quick
        else []
    )
    common = [f"seed={seed}"] + scale
    teacher_dir = out / "teacher"
    t0 = time.perf_counter()
    rows: list[dict[str, Any]] = []
    reused = (teacher_dir / "metrics.json").is_file() and (teacher_dir / "student.pt").is_file()
    if reused:
        log.info("reusing the finished teacher in %s", teacher_dir)
        teacher_metrics = json.loads((teacher_dir / "metrics.json").read_text())
    else:
        teacher_metrics = train(_config("seg_teacher.yaml", common + [f"output_dir={teacher_dir}"]), resume=True)
    rows.append({"arm": "teacher (FCN-R18)", **teacher_metrics})
    weights = teacher_dir / "student.pt"
    arms = [
        ("student alone (LR-ASPP-MBv3s)", "seg_student.yaml", []),
        ("base KD (CWD + KD)", "seg_akd.yaml", ["distill.akd.enabled=false"]),
        ("AKD (CWD + KD, K=4, relative)", "seg_akd.yaml", []),
    ]
    for label, cfg_name, extra in arms:
        name = label.split(" (")[0].replace(" ", "_")
        overrides = common + extra + [f"output_dir={out / name}"]
        if cfg_name == "seg_akd.yaml":
            overrides.append(f"teacher.weights={weights}")
        rows.append({"arm": label, **train(_config(cfg_name, overrides), resume=True)})
    total = time.perf_counter() - t0
    table = format_table(rows, total)
    print(table)
    atomic_write_text(out / "demo_table.md", table + "\n")
    summary = {
        "avatarkd": __version__,
        "seed": seed,
        "quick": quick,
        "total_wall_seconds": round(total, 1),
        "teacher_reused": reused,
        "table": table,
        "arms": rows,
    }
    for path in [out / "demo.json"] + ([record] if record else []):
        atomic_write_json(path, summary)
    return rows


def format_table(rows: list[dict[str, Any]], total_seconds: float) -> str:
    lines = ["| model | mIoU | pixel acc | steps | train time |", "|---|---|---|---|---|"]
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['arm']} | {m['miou']:.4f} | {m['pixel_acc']:.4f} | {r['step']} | {r['wall_seconds'] / 60:.1f} min |"
        )
    lines.append(f"\nTotal wall clock: {total_seconds / 60:.1f} min (this run; a reused teacher counts its own time).")
    return "\n".join(lines)
