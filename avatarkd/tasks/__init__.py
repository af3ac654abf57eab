"""Tasks: what differs between segmentation, detection and classification training."""

from __future__ import annotations

from ..config import TrainConfig
from ..errors import ConfigError
from ..naming import did_you_mean
from .base import Task
from .classification import ClassificationTask
from .detection import DetectionTask
from .segmentation import SegmentationTask

# the one list of tasks: config names come from the classes themselves
TASKS: dict[str, type[Task]] = {t.name: t for t in (SegmentationTask, DetectionTask, ClassificationTask)}


def make_task(cfg: TrainConfig) -> Task:
    """The task named by ``cfg.task``; an unknown name is a one-line ConfigError."""
    if cfg.task not in TASKS:
        raise ConfigError(
            f"task: unknown task {cfg.task!r}{did_you_mean(cfg.task, TASKS)}; choose one of {', '.join(TASKS)}"
        )
    return TASKS[cfg.task](cfg)


__all__ = ["TASKS", "ClassificationTask", "DetectionTask", "SegmentationTask", "Task", "make_task"]
