"""Image classification: class folders, cross-entropy, top-1 accuracy."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import ModelConfig
from ..data import SplitReport
from ..errors import ConfigError, DataError
from ..metrics import PredictedClasses, Top1Accuracy
from ..models import build_classifier, describe_output, output_item
from .base import Batch, Scorer, Task, mean_probabilities


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

    def scorer(self) -> Scorer:
        return _ClassificationScorer(self.num_classes)

    def image_scores(self, batch: Batch, predictions: Any) -> Tensor:
        """1 where the predicted class is right, else 0."""
        return (predictions == batch[1]).double().cpu()

    def ensemble(self, outputs: Sequence[Any]) -> Tensor:
        """Mean of the softmax probabilities, as logits (their log)."""
        return mean_probabilities([self.logits(out) for out in outputs])

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        return self.logits(model(batch[0])).argmax(1)


class _ClassificationScorer:
    """Top-1 accuracy and how many classes were predicted at all."""

    def __init__(self, num_classes: int) -> None:
        self.metric, self.predicted = Top1Accuracy(), PredictedClasses(num_classes)

    def update(self, batch: Batch, predictions: Any) -> None:
        self.metric.update(predictions, batch[1])
        self.predicted.update(predictions)

    def compute(self) -> dict[str, float]:
        self.metric.sync()
        self.predicted.sync()
        return {**{k: float(v) for k, v in self.metric.compute().items()}, "predicted_classes": self.predicted.count()}
