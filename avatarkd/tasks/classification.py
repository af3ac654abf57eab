"""Image classification: an ImageFolder, cross-entropy, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig
from ..data import ImageFolderDataset
from ..metrics import Top1Accuracy
from ..models import build_classifier
from .base import Batch, Task


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    context_keys = ("target",)  # the class labels, (N,)

    def datasets(self, data: DataConfig) -> tuple[Dataset, Dataset]:
        train = ImageFolderDataset(self.data_path(data.train_images, "classify", "train"), hflip=data.hflip)
        val = ImageFolderDataset(self.data_path(data.val_images, "classify", "val"))
        self.num_classes, self.class_names = train.num_classes, list(train.classes)
        return train, val

    def build_model(self, mcfg: ModelConfig) -> nn.Module:
        return build_classifier(mcfg.backbone, self.num_classes)  # type: ignore[arg-type]

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, labels = batch
        return {"loss_ce": F.cross_entropy(model(images).float(), labels)}

    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, labels = batch
        logits, losses = distiller(images, loss_context=self.loss_context(batch))
        return {"loss_ce": F.cross_entropy(logits.float(), labels), **losses}

    def loss_context(self, batch: Batch) -> dict[str, Any]:
        return {"target": batch[1]}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        metric = Top1Accuracy()
        for batch in batches:
            images, labels = self.to_device(batch, device)
            metric.update(model(images), labels)
        metric.sync()
        return {k: float(v) for k, v in metric.compute().items()}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        return model(batch[0]).argmax(1)
