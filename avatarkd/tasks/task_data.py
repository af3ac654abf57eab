"""The data side of a task: which datasets, how items become batches, where batches go.

Kept apart from the models and the metric so that ``avatarkd check-data`` and the loaders need
nothing else; a task overrides these only where its data differs (detection batches lists).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor
from torch.utils.data import Dataset

from ..config import DataConfig, TrainConfig
from ..data import SplitReport, innermost, open_dataset
from ..errors import DataError

log = logging.getLogger(__name__)

Batch = Any


class TaskData:
    """Datasets, collation and device transfer; ``datasets`` also tells the task its classes."""

    name: ClassVar[str]
    cfg: TrainConfig

    if TYPE_CHECKING:  # provided by Task; declared for the type checker only

        def set_classes(self, num_classes: int, names: Sequence[str]) -> None: ...

    def datasets(self, data: DataConfig) -> tuple[Dataset, Dataset]:
        """(train, evaluation split ``eval.split``) from ``data:``; sets the task's classes (``set_classes``).

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
        self.set_classes(int(reader.num_classes), list(reader.class_names))
        log.info("%s: %d classes from %s", self.name, int(reader.num_classes), reader.class_source)
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
