"""Tasks: what differs between segmentation, detection and classification training."""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..engine.config import TrainConfig
    from .base import Task


def make_task(cfg: TrainConfig) -> Task:
    from .classification import ClassificationTask
    from .detection import DetectionTask
    from .segmentation import SegmentationTask

    return {"segmentation": SegmentationTask, "detection": DetectionTask,
            "classification": ClassificationTask}[cfg.task](cfg)
