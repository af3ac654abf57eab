"""The pre-flight check: read a sample of every split before training, so bad data fails in seconds.

Pairing, split lists and missing files are already checked when a dataset is opened; this reads
the pixels: images decode, masks match their image's size and hold only class ids or ignore, boxes
load. It reports what it saw (sizes, classes present) as one row per split.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from .io import UnreadableError
from .wrappers import innermost


@dataclass
class SplitReport:
    """What the check saw in one split."""

    split: str
    images: int
    checked: int = 0
    unreadable: int = 0
    num_classes: int = 0
    class_source: str = ""
    classes_seen: set[int] = field(default_factory=set)
    boxes: int = 0
    min_size: tuple[int, int] | None = None
    max_size: tuple[int, int] | None = None

    def sizes(self) -> str:
        if self.min_size is None or self.max_size is None:
            return "-"
        lo, hi = (f"{h}x{w}" for h, w in (self.min_size, self.max_size))
        return lo if lo == hi else f"{lo} .. {hi}"


def sample_indices(size: int, samples: int | None) -> list[int]:
    """Every index, or ``samples`` of them spread evenly from first to last (deterministic)."""
    if samples is None or samples >= size:
        return list(range(size))
    if samples <= 1:
        return [0][:samples]
    return sorted({round(i * (size - 1) / (samples - 1)) for i in range(samples)})


def _classes_in(target: Any, ignore_index: int) -> set[int]:
    if isinstance(target, Tensor) and target.dim() == 2:  # a segmentation mask
        values = torch.unique(target)
        return {int(v) for v in values if int(v) != ignore_index}
    if isinstance(target, dict):  # detection
        return {int(v) for v in target["labels"]}
    return {int(target)}


def check_dataset(
    dataset: Any, split: str, samples: int | None, skip_unreadable: bool = False, ignore_index: int = 255
) -> SplitReport:
    """Reads ``samples`` items of ``dataset``'s reader (all when None); a bad item is a one-line DataError.

    Unreadable images are counted instead when ``skip_unreadable`` is set. The reader under any
    wrappers is read, so nothing is augmented and nothing is skipped silently.
    """
    reader = innermost(dataset)
    report = SplitReport(
        split,
        len(reader),
        num_classes=int(getattr(reader, "num_classes", 0) or 0),
        class_source=str(getattr(reader, "class_source", "")),
    )
    for index in sample_indices(len(reader), samples):
        try:
            image, target = reader[index]
        except UnreadableError as err:
            if not skip_unreadable:
                raise UnreadableError(f"{err} (data.skip_unreadable: true skips such images)") from err
            report.unreadable += 1
            continue
        report.checked += 1
        height, width = (int(v) for v in image.shape[-2:])
        lo, hi = report.min_size, report.max_size
        report.min_size = (height, width) if lo is None else (min(lo[0], height), min(lo[1], width))
        report.max_size = (height, width) if hi is None else (max(hi[0], height), max(hi[1], width))
        report.classes_seen |= _classes_in(target, ignore_index)
        if isinstance(target, dict):
            report.boxes += len(target["boxes"])
    return report


def format_reports(reports: list[SplitReport]) -> str:
    """A markdown table, one row per split."""
    lines = [
        "| split | images | read | unreadable | sizes (HxW) | classes | seen in sample | boxes |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        boxes = str(r.boxes) if r.boxes else "-"
        lines.append(
            f"| {r.split} | {r.images} | {r.checked} | {r.unreadable} | {r.sizes()} | {r.num_classes} | "
            f"{len(r.classes_seen)} | {boxes} |"
        )
    return "\n".join(lines)
