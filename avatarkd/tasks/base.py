"""What the training engine needs from a task, and nothing more.

A task knows its data format, its models, its loss, its metric and its pictures; the engine
knows optimisation, checkpoints, logging and distribution. Keeping them apart lets one engine
train segmenters, detectors and classifiers, with or without a teacher.

``Task`` is assembled from three parts, each in its own module: ``TaskData`` (datasets, batches),
``TaskModels`` (building and checking models) and ``TaskEvaluation`` (predictions and their
metric); the training step itself (``losses``, ``distill_losses``) is declared here. The one
state they share is the task's classes, set once, explicitly: by ``datasets()`` from the training
split, or by ``set_classes`` from a checkpoint.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

from torch import Tensor, nn

from ..config import TrainConfig
from ..errors import ConfigError
from .task_data import Batch, TaskData, same_size, stack_images
from .task_evaluation import Scorer, TaskEvaluation, mean_probabilities
from .task_models import TaskModels, TeacherForward


class Task(TaskData, TaskModels, TaskEvaluation, ABC):
    name: ClassVar[str]
    primary_metric: ClassVar[str]
    # per-batch inputs this task hands to the distillation losses (Distiller loss_context)
    context_keys: ClassVar[tuple[str, ...]] = ()

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self._classes: tuple[int, list[str]] | None = None

    # ------------------------------------------------------------------ classes
    def set_classes(self, num_classes: int, names: Sequence[str]) -> None:
        """The classes models are built for and metrics are named by (``names`` may be empty: unnamed)."""
        self._classes = (int(num_classes), list(names))

    def _known_classes(self) -> tuple[int, list[str]]:
        if self._classes is None:
            raise ConfigError(
                f"the {self.name} task does not know its classes yet: open its datasets (Task.datasets) "
                "or give them (Task.set_classes) before building a model or a metric"
            )
        return self._classes

    @property
    def num_classes(self) -> int:
        return self._known_classes()[0]

    @property
    def class_names(self) -> list[str]:
        return self._known_classes()[1]

    # ------------------------------------------------------------------ steps
    @abstractmethod
    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Task losses of a plain model (no teacher), keyed ``loss_*``."""

    @abstractmethod
    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Task losses plus the distiller's ``distill.*`` losses and ``distill_total``."""

    def loss_context(self, batch: Batch) -> dict[str, Any]:
        """The per-batch inputs named by ``context_keys``, for losses that need them (e.g. DKD's labels)."""
        return {}


__all__ = [
    "Batch",
    "Scorer",
    "Task",
    "TaskData",
    "TaskEvaluation",
    "TaskModels",
    "TeacherForward",
    "mean_probabilities",
    "same_size",
    "stack_images",
]
