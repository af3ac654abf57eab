"""Data loading: avatarkd's training loader vs a plain torchvision ImageFolder + ToTensor loader.

Both read the bundled 32x32 classification crops (``classify/train``), batch 32, shuffled, random
horizontal flip (p 0.5), the same ``--workers``, ``--batches`` batches per timed pass:

- ``avatarkd``: exactly what training iterates: the Trainer's loader (``Trainer._loader``) over its
  training set (reproducible per-sample augmentation, resumable sampler, the task's collate), built
  from the packaged ``cls_teacher.yaml``;
- ``torchvision``: ``DataLoader(ImageFolder(root, Compose([RandomHorizontalFlip(), ToTensor()])),
  shuffle=True)``.

Passes alternate (avatarkd, torchvision, ...) ``--repeats`` times after one warm-up pass each (file
cache); the table shows medians of the time per batch and the ratio. Target (issues 12, 19): avatarkd
<= 1.1x torchvision.

    python benchmarks/data_loading.py                   # 30 batches x 9 repeats, no workers
    python benchmarks/data_loading.py --workers 2
    python benchmarks/data_loading.py --batches 3 --repeats 1   # a quick check that it runs
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from avatarkd.atomic import atomic_write_json  # noqa: E402
from avatarkd.config import TrainConfig, apply_overrides, validate  # noqa: E402
from avatarkd.demo import packaged_config  # noqa: E402
from avatarkd.runner import build_trainer  # noqa: E402

BATCH = 32
DATA = ROOT / "avatarkd" / "demo_data" / "fashion_canvas" / "classify" / "train"


def avatarkd_loader(workers: int, workdir: Path) -> Any:
    over = [
        f"output_dir={workdir}",
        f"data.batch_size={BATCH}",
        f"data.num_workers={workers}",
        "data.hflip=0.5",
        "data.crop_size=null",  # the 32x32 crops as they are, as the torchvision side loads them
        "model.backbone_weights=null",  # the loader is measured, not the model
        "train.device=cpu",
    ]
    trainer = build_trainer(
        validate(TrainConfig, apply_overrides(packaged_config("cls_teacher.yaml"), over)), check_output=False
    )
    epoch = 0

    def make() -> DataLoader:
        nonlocal epoch
        trainer.sampler.set_position(epoch, 0)
        if hasattr(trainer.train_set, "epoch"):
            trainer.train_set.epoch = epoch
        epoch += 1
        return trainer._loader(trainer.train_set, trainer.sampler, trainer.batch_size, drop_last=True, epoch=epoch)

    return make


def torchvision_loader(workers: int) -> Any:
    from torchvision import transforms
    from torchvision.datasets import ImageFolder

    dataset = ImageFolder(
        str(DATA), transform=transforms.Compose([transforms.RandomHorizontalFlip(0.5), transforms.ToTensor()])
    )
    return lambda: DataLoader(dataset, batch_size=BATCH, shuffle=True, num_workers=workers, drop_last=True)


def per_batch(make: Any, batches: int) -> float:
    """Seconds per batch to create a loader and draw ``batches`` batches from it."""
    t0 = time.perf_counter()
    seen = 0
    while seen < batches:
        for images, labels in make():
            assert images.shape[0] == BATCH and labels.shape[0] == BATCH
            seen += 1
            if seen >= batches:
                break
    return (time.perf_counter() - t0) / batches


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--batches", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=9)
    ap.add_argument("--workers", type=int, default=0)
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "out" / "data_loading.json")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        arms = {"avatarkd": avatarkd_loader(args.workers, Path(tmp)), "torchvision": torchvision_loader(args.workers)}
        for make in arms.values():
            per_batch(make, args.batches)  # warm-up: file cache, worker start-up paths
        times: dict[str, list[float]] = {name: [] for name in arms}
        for _ in range(args.repeats):
            for name, make in arms.items():
                times[name].append(per_batch(make, args.batches))
    med = {name: statistics.median(v) for name, v in times.items()}
    print(
        f"\nloading {args.batches} batches of {BATCH} 32x32 crops, {args.workers} workers, "
        f"{torch.get_num_threads()} threads, median of {args.repeats} (alternating)"
    )
    print(f"{'loader':<12} {'ms/batch':>9} {'x torchvision':>14}")
    for name, value in med.items():
        print(f"{name:<12} {1000 * value:>9.2f} {value / med['torchvision']:>14.3f}")
    atomic_write_json(
        args.out,
        {
            "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "torch": torch.__version__,
            "threads": torch.get_num_threads(),
            "workers": args.workers,
            "batches": args.batches,
            "repeats": args.repeats,
            "command": " ".join(sys.argv),
            "median_s_per_batch": med,
            "all_s_per_batch": times,
            "ratio_avatarkd_to_torchvision": med["avatarkd"] / med["torchvision"],
        },
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
