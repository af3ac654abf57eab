"""What the training engine needs from a task, and nothing more.

A task knows its data format, its models, its loss and its metric; the engine knows optimisation,
checkpoints, logging and distribution. Keeping them apart lets one engine train segmenters,
detectors and classifiers, with or without a teacher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..data import demo_data_root
from ..engine.config import DataConfig, ModelConfig, TrainConfig

Batch = Any


class Task(ABC):
    name: str
    primary_metric: str

    def __init__(self, cfg: TrainConfig) -> None:
        self.cfg = cfg
        self.num_classes = 0
        self.class_names: list[str] = []

    # ------------------------------------------------------------------ data
    def data_path(self, explicit: Path | None, *layout: str) -> Path:
        """An explicit path from the config, else ``root/<layout>`` (bundled data if no root)."""
        if explicit is not None:
            return explicit
        root = self.cfg.data.root if self.cfg.data.root is not None else demo_data_root()
        return Path(root).joinpath(*layout)

    @abstractmethod
    def datasets(self, data: DataConfig) -> tuple[Dataset, Dataset]:
        """(train, val); sets ``num_classes`` and ``class_names``."""

    def collate(self, batch: list[Any]) -> Batch:
        images, targets = zip(*batch)
        return torch.stack(images), torch.stack([torch.as_tensor(t) for t in targets])

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        images, targets = batch
        return images.to(device, non_blocking=True), targets.to(device, non_blocking=True)

    def images_of(self, batch: Batch) -> Any:
        return batch[0]

    # ------------------------------------------------------------------ models
    @abstractmethod
    def build_model(self, mcfg: ModelConfig) -> nn.Module: ...

    def teacher_forward(self) -> Callable[..., Any] | None:
        """A cheaper teacher call when the points do not need its full output (None: full call)."""
        return None

    # ------------------------------------------------------------------ steps
    @abstractmethod
    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Task losses of a plain model (no teacher), keyed ``loss_*``."""

    @abstractmethod
    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        """Task losses plus the distiller's ``distill.*`` losses and ``distill_total``."""

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Metrics over the validation set (gathered across ranks), keyed without prefix."""

    @abstractmethod
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        """Predictions on one batch, in the form the task's plot function draws."""

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path | None:
        """A picture of predictions vs ground truth; None where a picture says little."""
        return None
