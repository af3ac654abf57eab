"""What the training engine needs from a task, and nothing more.

A task knows its data format, its models, its loss, its metric and its pictures; the engine
knows optimisation, checkpoints, logging and distribution. Keeping them apart lets one engine
train segmenters, detectors and classifiers, with or without a teacher.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data import demo_data_root
from ..models import build_from_factory

Batch = Any
TeacherForward = Callable[..., Any]


class Task(ABC):
    name: ClassVar[str]
    primary_metric: ClassVar[str]
    # per-batch inputs this task hands to the distillation losses (Distiller loss_context)
    context_keys: ClassVar[tuple[str, ...]] = ()

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

    def factory_model(self, mcfg: ModelConfig, num_classes: int) -> nn.Module:
        """The user's ``model.factory`` (looked up beside the YAML file too), given ``num_classes`` if it takes one."""
        assert mcfg.factory is not None
        dirs = [mcfg.config_dir] if mcfg.config_dir is not None else []
        return build_from_factory(mcfg.factory, mcfg.kwargs, num_classes, dirs)

    @torch.no_grad()
    def check_output(self, model: nn.Module, batch: Batch) -> None:
        """Run ``model`` once (eval mode) on a batch and raise one ConfigError line if its output breaks the
        task's contract; called before training so that a wrong model fails before anything is written."""
        was_training = model.training
        model.eval()
        try:
            self.check_eval_output(model(self.images_of(batch)), batch)
        finally:
            model.train(was_training)

    def check_eval_output(self, output: Any, batch: Batch) -> None:
        """Raise a one-line ConfigError when an eval-mode ``output`` does not fit the task (default: anything goes)."""
        return None

    def backbone_forward(self, teacher: nn.Module) -> TeacherForward | None:
        """A call of the teacher's feature extractor alone, if this task's models have one."""
        return None

    def teacher_forward(self, teacher: nn.Module) -> TeacherForward | None:
        """A cheaper teacher call when every point reads the backbone (None: the full call).

        The features under ``backbone`` do not depend on the heads, so skipping the heads (and,
        for detectors, the box decoding and NMS) gives the same recorded tensors for less work.
        """
        points = self.cfg.distill.points if self.cfg.distill else []
        if not points or not all(_under_backbone(p.teacher or p.student) for p in points):
            return None
        return self.backbone_forward(teacher)

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

    @abstractmethod
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Metrics over the validation set (gathered across ranks), keyed without prefix."""

    @abstractmethod
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        """Predictions on one batch, in the form the task's plot function draws."""

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path | None:
        """A picture of predictions vs ground truth; None where a picture says little."""
        return None


def _under_backbone(path: str) -> bool:
    return path == "backbone" or path.startswith("backbone.")
