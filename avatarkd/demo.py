"""``avatarkd demo``: teacher, then student alone vs base distillation vs AKD, on the bundled data.

Segmentation on the Fashion-MNIST canvases in the regime where the paper-regime study (issue 21)
found distillation to help: LR-ASPP on ImageNet-pretrained MobileNetV2 on both sides, the teacher
made stronger by a 2.5x longer schedule with rescale augmentation, the canvases seen at 128 px.
Same schedule and seed for every student arm; the labels in the table come from the configs.
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


TEACHER = "seg_pretrained_teacher.yaml"
AKD = "seg_pretrained_akd.yaml"
ARMS: list[tuple[str, str, list[str]]] = [  # (output folder, config, overrides)
    ("student_alone", "seg_pretrained_student.yaml", []),
    ("base_KD", AKD, ["distill.akd.enabled=false"]),
    ("AKD", AKD, []),
]


def describe(cfg: TrainConfig) -> str:
    """``DeepLabV3/MobileNetV2`` from a config's model: what the table's reader needs to know."""
    heads = {"fcn": "FCN", "deeplabv3": "DeepLabV3", "lraspp": "LR-ASPP"}
    m = cfg.model
    return f"{heads.get(m.arch or '', m.arch or m.factory)}/{m.backbone}" + (", ImageNet" if m.backbone_weights else "")


def label(name: str, cfg: TrainConfig) -> str:
    """The arm's row title: what it is and, for distilled arms, the losses and the AKD settings."""
    text = name.replace("_", " ")
    if cfg.distill is None:
        return f"{text} ({describe(cfg)})"
    losses = " + ".join(f"{p.loss.upper()} {p.name}" for p in cfg.distill.points)
    akd = cfg.distill.akd
    if akd.enabled:
        losses += f", K={akd.num_avatars}, {akd.uncertainty}"
    return f"{text} ({losses})"


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
        teacher_metrics = train(_config(TEACHER, common + [f"output_dir={teacher_dir}"]), resume=True)
    rows.append({"arm": f"teacher ({describe(_config(TEACHER, []))})", **teacher_metrics})
    weights = teacher_dir / "student.pt"
    for name, cfg_name, extra in ARMS:
        overrides = common + extra + [f"output_dir={out / name}"]
        cfg = _config(cfg_name, overrides + ([f"teacher.weights={weights}"] if cfg_name == AKD else []))
        rows.append({"arm": label(name, cfg), **train(cfg, resume=True)})
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
