"""What the training engine needs from a task, and nothing more.

A task knows its data format, its models, its loss, its metric and its pictures; the engine
knows optimisation, checkpoints, logging and distribution. Keeping them apart lets one engine
train segmenters, detectors and classifiers, with or without a teacher.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig, TrainConfig
from ..data import SplitReport, innermost, open_dataset
from ..errors import ConfigError, DataError
from ..models import build_from_factory

log = logging.getLogger(__name__)

Batch = Any
TeacherForward = Callable[..., Any]


class Scorer(Protocol):
    """A task metric fed with predictions in ``Task.predict``'s form, batch by batch.

    ``Task.evaluate`` is ``predict`` + a scorer; keeping the two apart lets code that makes its
    own predictions (the Avatars' ensemble and per-image oracle, ``avatarkd avatars``) be scored
    by exactly the metric code that scores a model.
    """

    def update(self, batch: Batch, predictions: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


def mean_probabilities(logits: Sequence[Tensor]) -> Tensor:
    """Log of the mean of the softmax probabilities (over dim 1) of several models' logits.

    A log so that the result is still a valid logits tensor for code that argmaxes or softmaxes it.
    """
    probs = torch.stack([F.softmax(t.float(), dim=1) for t in logits]).mean(0)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


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
    def datasets(self, data: DataConfig) -> tuple[Dataset, Dataset]:
        """(train, evaluation split ``eval.split``) from ``data:``; sets ``num_classes`` and ``class_names``.

        The training split decides the classes (format, config or data, see ``data.classes``); the
        evaluation split must agree with it.
        """
        train = open_dataset(self.name, split="train", config=data, seed=self.cfg.seed)
        split = self.cfg.eval.split
        evaluation = open_dataset(self.name, split=split, config=self.evaluation_config(data, train))
        reader, eval_reader = innermost(train), innermost(evaluation)  # wrappers share their reader's classes
        if eval_reader.num_classes != reader.num_classes:
            raise DataError(
                f"the {split} split has {eval_reader.num_classes} classes ({eval_reader.class_source}) "
                f"but the train split has {reader.num_classes} ({reader.class_source})"
            )
        self.num_classes = int(reader.num_classes)
        self.class_names = list(reader.class_names)
        log.info("%s: %d classes from %s", self.name, self.num_classes, innermost(train).class_source)
        return train, evaluation

    def evaluation_config(self, data: DataConfig, train: Dataset) -> DataConfig:
        """The ``data:`` options the evaluation split is opened with (segmentation: the train split's classes)."""
        return data

    def check_reports(self, reports: list[SplitReport]) -> None:
        """Fail before training on what the pre-flight check saw and this task cannot batch.

        Images of different sizes cannot be stacked into one batch; training crops (``data.crop_size``)
        give them one size. (Detection overrides this: detectors batch any sizes.)
        """
        train = reports[0]
        if self.cfg.data.crop_size is None and train.min_size != train.max_size:
            raise DataError(
                f"training images have different sizes ({train.sizes()}), which cannot form one "
                "batch; set data.crop_size: [height, width] to train on crops of one size"
            )

    def collate(self, batch: list[Any]) -> Batch:
        """Stacked tensors; items ``None`` (skipped unreadable images) are dropped, an empty batch is None."""
        batch = [item for item in batch if item is not None]
        if not batch:
            return None
        images, targets = zip(*batch, strict=True)
        return stack_images(images), torch.stack([torch.as_tensor(t) for t in targets])

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

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Metrics over the validation set (gathered across ranks), keyed without prefix: ``predict`` + ``scorer``."""
        scorer = self.scorer()
        for batch in batches:
            if batch is None:
                continue
            batch = self.to_device(batch, device)
            scorer.update(batch, self.predict(model, batch))
        return scorer.compute()

    def scorer(self) -> Scorer:
        """A fresh metric accumulator for ``predict``'s predictions (tasks overriding ``evaluate`` may lack one)."""
        raise ConfigError(f"the {self.name} task has no scorer for given predictions (Task.scorer)")

    @abstractmethod
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        """Predictions on one batch, in the form the task's plot function draws."""

    def image_scores(self, batch: Batch, predictions: Any) -> Tensor:
        """One number per image, higher is better: how the per-image oracle (``avatarkd avatars``) picks."""
        raise ConfigError(f"the {self.name} task has no per-image score (Task.image_scores)")

    def ensemble(self, outputs: Sequence[Any]) -> Any:
        """One eval-mode model output from several models' outputs on the same batch (``avatarkd avatars``)."""
        raise ConfigError(f"the {self.name} task cannot ensemble model outputs (Task.ensemble)")

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path | None:
        """A picture of predictions vs ground truth; None where a picture says little."""
        return None


def same_size(images: Sequence[Tensor]) -> bool:
    return all(tuple(im.shape) == tuple(images[0].shape) for im in images)


def stack_images(images: Sequence[Tensor]) -> Tensor:
    """One batch tensor; images of different sizes are a one-line DataError that says what to set."""
    if not same_size(images):
        sizes = sorted({f"{im.shape[-2]}x{im.shape[-1]}" for im in images})
        raise DataError(
            f"images of different sizes ({', '.join(sizes[:3])}) cannot form one batch; "
            "set data.crop_size: [height, width] to train on crops of one size"
        )
    return torch.stack(list(images))


def _under_backbone(path: str) -> bool:
    return path == "backbone" or path.startswith("backbone.")
