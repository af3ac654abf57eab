"""Image classification: class folders, cross-entropy, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..data import SplitReport
from ..errors import ConfigError, DataError
from ..metrics import PredictedClasses, Top1Accuracy
from ..models import build_classifier, describe_output, output_item
from .base import Batch, Task


class ClassificationTask(Task):
    name = "classification"
    primary_metric = "top1"
    context_keys = ("target",)  # the class labels, (N,)

    def check_reports(self, reports: list[SplitReport]) -> None:
        """Classification batches both splits as stacked tensors: every split needs one size (or data.crop_size)."""
        if self.cfg.data.crop_size is None:
            for report in reports:
                if report.min_size != report.max_size:
                    raise DataError(
                        f"{report.split} images have different sizes ({report.sizes()}), which cannot "
                        "form one batch; set data.crop_size: [height, width] (random-resized crops for "
                        "training, centre crops for evaluation)"
                    )

    def build_model(self, mcfg: ModelConfig) -> nn.Module:
        if mcfg.factory is not None:
            return self.factory_model(mcfg, self.num_classes)
        return build_classifier(mcfg.backbone, self.num_classes)

    def logits(self, output: Any) -> Tensor:
        """The output contract: (N, C) logits, or a dict / ModelOutput holding them under ``model.output_key``
        (default ``out``, or ``logits`` for Hugging Face); anything else is a one-line ConfigError."""
        key = self.cfg.model.output_key
        out = output_item(output, key)
        if not (isinstance(out, Tensor) and out.dim() == 2 and out.shape[1] == self.num_classes):
            where = f" (or a dict holding them under {key!r}, model.output_key)" if key else ""
            raise ConfigError(
                f"model output: classification expects (N, {self.num_classes}) logits{where}; "
                f"the model returned {describe_output(output)}"
            )
        return out

    def check_eval_output(self, output: Any, batch: Batch) -> None:
        self.logits(output)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, labels = batch
        return {"loss_ce": F.cross_entropy(self.logits(model(images)).float(), labels)}

    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, labels = batch
        logits, losses = distiller(images, loss_context=self.loss_context(batch))
        return {"loss_ce": F.cross_entropy(self.logits(logits).float(), labels), **losses}

    def loss_context(self, batch: Batch) -> dict[str, Any]:
        return {"target": batch[1]}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        metric, predicted = Top1Accuracy(), PredictedClasses(self.num_classes)
        for batch in batches:
            if batch is None:
                continue
            images, labels = self.to_device(batch, device)
            logits = self.logits(model(images))
            metric.update(logits, labels)
            predicted.update(logits.argmax(1))
        metric.sync()
        predicted.sync()
        return {**{k: float(v) for k, v in metric.compute().items()}, "predicted_classes": predicted.count()}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        return self.logits(model(batch[0])).argmax(1)
