"""Base-KD training step: avatarkd's Trainer vs torchdistill 1.1.5 on the same work.

The same work on both sides: a torchvision ResNet-18 teacher (random weights: cost does not depend
on them; frozen, eval mode, no grad) distilled into a MobileNetV3-small student (both built by
``avatarkd.models.build_classifier``, 10 classes), on the bundled 32x32 classification crops with a
random horizontal flip (p 0.5), batch 32, AdamW (lr 2e-3, weight decay 1e-4) with a per-step
cosine learning rate, loss ``CE + 1.0 * tau^2 * KL(softmax(t/tau) || softmax(s/tau))`` (batch mean,
tau 4), no gradient clipping, ``--steps`` steps, ``--workers`` loader workers on both sides, the
loss read on the host every 20 steps (for logging) on both sides.

- avatarkd: ``Trainer`` built from the packaged ``cls_akd.yaml`` with ``distill.akd.enabled=false``
  (base KD) as a user would run it, minus checkpoints and the final evaluation: the timed span is
  the training loop (``Trainer._loop``), data loading included.
- torchdistill: a ``DistillationBox`` from its public ``get_distillation_box`` with its ``KDLoss``
  (alpha 1 on CE, beta 1 on the KL term) and a plain torchvision ``ImageFolder`` +
  ``RandomHorizontalFlip`` + ``ToTensor`` dataset, driven by the loop below (our own driver: pre-epoch
  process, ``forward_process``, ``post_forward_process``, post-epoch process), timed the same way.

Runs alternate (avatarkd, torchdistill, avatarkd, ...) ``--repeats`` times after one short warm-up
run each; the table shows the median time per step and the ratio. Without torchdistill installed
only avatarkd runs. Target (issue 12): avatarkd's step no slower than torchdistill's.

    pip install -e '.[bench]'                 # torchdistill==1.1.5, for this benchmark only
    python benchmarks/engine.py               # 300 steps x 3 repeats, CPU
    python benchmarks/engine.py --device cuda
    python benchmarks/engine.py --steps 10 --repeats 1     # a quick check that it runs
"""

from __future__ import annotations

import argparse
import copy
import importlib.util
import logging
import math
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch import nn

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd.atomic import atomic_write_json  # noqa: E402
from avatarkd.config import TrainConfig, apply_overrides, validate  # noqa: E402
from avatarkd.demo import packaged_config  # noqa: E402
from avatarkd.models import build_classifier  # noqa: E402
from avatarkd.runner import build_trainer  # noqa: E402
from benchmarks._timing import sync  # noqa: E402

BATCH, LR, WEIGHT_DECAY, TAU, LOG_EVERY = 32, 2e-3, 1e-4, 4.0, 20
DATA = ROOT / "avatarkd" / "demo_data" / "fashion_canvas" / "classify" / "train"


def cosine(total: int):
    """The per-step cosine factor avatarkd's schedule uses (no warm-up)."""
    return lambda step: 0.5 * (1.0 + math.cos(math.pi * min(1.0, step / max(1, total))))


# ------------------------------------------------------------------ avatarkd
def avatarkd_run(steps: int, teacher_weights: Path, device: str, workers: int, workdir: Path) -> float:
    """Seconds of avatarkd's training loop for ``steps`` steps of base KD."""
    over = [
        "distill.akd.enabled=false",
        # the pair this benchmark pins (not the shipped config's pretrained MobileNetV2s), on the 32x32 crops
        "model.backbone=mobilenet_v3_small",
        "model.backbone_weights=null",
        "model.bn_momentum=0.1",
        "data.crop_size=null",
        f"teacher={{arch: classifier, backbone: resnet18, weights: {teacher_weights}}}",
        "distill.points.0.teacher=fc",
        f"output_dir={workdir}",
        f"train.steps={steps}",
        f"train.log_every={LOG_EVERY}",
        f"train.checkpoint_every={10**9}",
        "train.plots=false",
        "train.eval_every=null",
        "optim.max_grad_norm=null",
        f"optim.lr={LR}",
        f"optim.weight_decay={WEIGHT_DECAY}",
        f"data.batch_size={BATCH}",
        f"data.num_workers={workers}",
        f"train.device={device}",
    ]
    trainer = build_trainer(
        validate(TrainConfig, apply_overrides(packaged_config("cls_akd.yaml"), over)), check_output=False
    )
    assert trainer.cfg.distill is not None and trainer.cfg.distill.points[0].loss_kwargs.get("tau") == TAU
    elapsed: dict[str, float] = {}
    loop = trainer._loop

    def timed_loop(logger: Any) -> None:
        sync(device)
        t0 = time.perf_counter()
        loop(logger)
        sync(device)
        elapsed["loop"] = time.perf_counter() - t0

    trainer._loop = timed_loop  # type: ignore[method-assign]
    trainer.evaluate = lambda: {}  # type: ignore[method-assign]  # not part of a training step
    trainer.fit()
    return elapsed["loop"]


# ------------------------------------------------------------------ torchdistill
def torchdistill_run(steps: int, teacher: nn.Module, student: nn.Module, device: str, workers: int) -> float:
    """Seconds of a torchdistill training loop for ``steps`` steps of the same base KD."""
    from torch.utils.data import RandomSampler
    from torchdistill.core.distillation import get_distillation_box
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(
        str(DATA), transform=transforms.Compose([transforms.RandomHorizontalFlip(0.5), transforms.ToTensor()])
    )
    train_config = {
        "num_epochs": math.ceil(steps / (len(dataset) // BATCH)),
        "train_data_loader": {
            "dataset_id": "train",
            "requires_supp": False,
            "sampler": {"class_or_func": RandomSampler, "kwargs": {}},
            "kwargs": {
                "batch_size": BATCH,
                "num_workers": workers,
                "drop_last": True,
                "pin_memory": device.startswith("cuda"),
            },
        },
        "teacher": {"requires_grad": False, "forward_proc": "forward_batch_only"},
        "student": {"requires_grad": True, "forward_proc": "forward_batch_only"},
        "optimizer": {"key": "AdamW", "kwargs": {"lr": LR, "weight_decay": WEIGHT_DECAY}},
        "scheduler": {"key": "LambdaLR", "kwargs": {"lr_lambda": cosine(steps)}, "scheduling_step": 1},
        "criterion": {
            "key": "WeightedSumLoss",
            "kwargs": {
                "sub_terms": {
                    "kd": {
                        "criterion": {
                            "key": "KDLoss",
                            "kwargs": {
                                "student_module_path": ".",
                                "student_module_io": "output",
                                "teacher_module_path": ".",
                                "teacher_module_io": "output",
                                "temperature": TAU,
                                "alpha": 1.0,
                                "beta": 1.0,
                                "reduction": "batchmean",
                            },
                        },
                        "weight": 1.0,
                    }
                }
            },
        },
    }
    box = get_distillation_box(
        teacher.eval(), student, {"train": dataset}, train_config, torch.device(device), None, False, 1
    )
    step, epoch = 0, 0
    sync(device)
    t0 = time.perf_counter()
    while step < steps:
        box.pre_epoch_process(epoch=epoch)
        for images, targets in box.train_data_loader:
            images = images.to(device, non_blocking=True)
            targets = targets.to(device, non_blocking=True)
            loss = box.forward_process(images, targets)
            box.post_forward_process(loss=loss)
            step += 1
            if step % LOG_EVERY == 0 or step == steps:
                _ = loss.item()  # what a logging step reads
            if step >= steps:
                break
        box.post_epoch_process()
        epoch += 1
    sync(device)
    return time.perf_counter() - t0


# ------------------------------------------------------------------ main
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--warmup-steps", type=int, default=10)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "engine.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    have_td = importlib.util.find_spec("torchdistill") is not None
    if have_td:
        logging.getLogger("torchdistill").setLevel(logging.WARNING)
    else:
        print("torchdistill is not installed (pip install -e '.[bench]'): timing avatarkd only")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        torch.manual_seed(0)
        teacher = build_classifier("resnet18", 10)
        teacher_weights = work / "teacher.pt"
        torch.save(teacher.state_dict(), teacher_weights)
        student = build_classifier("mobilenet_v3_small", 10)
        teacher, student = teacher.to(args.device), student.to(args.device)
        runs = 0

        def ours(steps: int) -> float:
            nonlocal runs
            runs += 1
            return avatarkd_run(steps, teacher_weights, args.device, args.workers, work / f"run{runs}")

        def theirs(steps: int) -> float:
            return torchdistill_run(steps, copy.deepcopy(teacher), copy.deepcopy(student), args.device, args.workers)

        arms = {"avatarkd": ours} | ({"torchdistill": theirs} if have_td else {})
        for fn in arms.values():  # warm-up: allocator, kernels, file cache
            fn(args.warmup_steps)
        per_step: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, fn in arms.items():
                per_step[name].append(fn(args.steps) / args.steps)
    med = {name: statistics.median(v) for name, v in per_step.items()}
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "cpu"
    print(
        f"\nbase-KD training step (ResNet-18 -> MobileNetV3-small, batch {BATCH}, {args.steps} steps), {device_name}, "
        f"{torch.get_num_threads()} threads, {args.workers} workers, median of {args.repeats} (alternating)"
    )
    print(f"{'engine':<14} {'ms/step':>9} {'x torchdistill':>15}")
    for name, value in med.items():
        ratio = value / med["torchdistill"] if "torchdistill" in med else float("nan")
        print(f"{name:<14} {1000 * value:>9.1f} {ratio:>15.3f}")
    report = {
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "torch": torch.__version__,
        "device": args.device,
        "device_name": device_name,
        "threads": torch.get_num_threads(),
        "workers": args.workers,
        "steps": args.steps,
        "repeats": args.repeats,
        "command": " ".join(sys.argv),
        "median_s_per_step": med,
        "all_s_per_step": per_step,
        "ratio_avatarkd_to_torchdistill": med["avatarkd"] / med["torchdistill"] if "torchdistill" in med else None,
    }
    if have_td:
        import torchdistill

        report["torchdistill"] = torchdistill.__version__
    atomic_write_json(args.out, report)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
