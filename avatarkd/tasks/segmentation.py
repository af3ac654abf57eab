"""Semantic segmentation: any supported format, cross-entropy, mIoU at the labels' own resolution."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig
from ..data import innermost, pad_to
from ..errors import ConfigError
from ..metrics import SegmentationMetric
from ..models import build_segmenter, describe_output, normalize_images, output_item
from .base import Batch, Scorer, Task, TeacherForward, mean_probabilities, same_size, stack_images
from .drawing import plot_segmentation
from .seg_inference import segment_logits


def backbone_only(teacher: nn.Module, images: Tensor) -> Any:
    """The teacher's backbone alone: all that backbone points need (no head, no upsampling).

    The teacher's input normalisation is a pre-hook on the whole model, so it is applied here too.
    """
    return cast(nn.Module, teacher.backbone)(normalize_images(teacher, images))


def pad_stack(
    images: Sequence[Tensor], masks: Sequence[Tensor] | None, ignore_index: int
) -> tuple[Tensor, Tensor | None]:
    """Images padded (bottom/right) to the largest in the list and stacked; masks padded with ignore."""
    size = (max(im.shape[-2] for im in images), max(im.shape[-1] for im in images))
    if masks is None:
        return torch.stack([pad_to(im, None, size, ignore_index)[0] for im in images]), None
    padded = [pad_to(im, m, size, ignore_index) for im, m in zip(images, masks, strict=True)]
    return torch.stack([im for im, _ in padded]), torch.stack([m for _, m in padded if m is not None])


class SegmentationTask(Task):
    name = "segmentation"
    primary_metric = "miou"
    context_keys = ("target",)  # the label mask (N, H, W), ignored pixels as -1

    def evaluation_config(self, data: DataConfig, train: Dataset) -> DataConfig:
        # a scan of the training masks (or the format) decided the classes; the evaluation split uses them
        reader = innermost(train)
        return data.model_copy(update={"num_classes": reader.num_classes, "class_names": list(reader.class_names)})

    def collate(self, batch: list[Any]) -> Batch:
        """Stacked tensors when the images share a size (always in training: crops), else lists.

        Evaluation images keep their original sizes; lists let each be inferred at its own size.
        """
        batch = [item for item in batch if item is not None]
        if not batch:
            return None
        images, masks = zip(*batch, strict=True)
        if same_size(images):
            return torch.stack(images), torch.stack(masks)
        return list(images), list(masks)

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        images, masks = batch
        if isinstance(images, list):
            return (
                [im.to(device, non_blocking=True) for im in images],
                [m.to(device, non_blocking=True) for m in masks],
            )
        return images.to(device, non_blocking=True), masks.to(device, non_blocking=True)

    def images_of(self, batch: Batch) -> Any:
        images = batch[0]
        return pad_stack(images, None, 0)[0] if isinstance(images, list) else images

    def build_model(self, mcfg: ModelConfig) -> nn.Module:
        if mcfg.factory is not None:
            return self.factory_model(mcfg, self.num_classes)
        return build_segmenter(mcfg.arch, mcfg.backbone, self.num_classes, mcfg.output_stride)

    def logits(self, output: Any, size: tuple[int, ...] | torch.Size) -> Tensor:
        """The output contract: (N, C, h, w) logits, or a dict / ModelOutput holding them under ``model.output_key``
        (default ``out``, or ``logits`` for Hugging Face), at any resolution; upsampled (bilinear) to ``size``,
        the mask's (a SegFormer's logits are at 1/4). Anything else is a one-line ConfigError."""
        key = self.cfg.model.output_key
        out = output_item(output, key)
        if not (isinstance(out, Tensor) and out.dim() == 4 and out.shape[1] == self.num_classes):
            where = repr(key) if key else "'out' (or 'logits')"
            raise ConfigError(
                f"model output: segmentation expects (N, {self.num_classes}, H, W) logits at any resolution, "
                f"or a dict holding them under {where} (model.output_key); the model returned {describe_output(output)}"
            )
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out

    def check_eval_output(self, output: Any, batch: Batch) -> None:
        self.logits(output, batch[1].shape[-2:])

    def backbone_forward(self, teacher: nn.Module) -> TeacherForward | None:
        return backbone_only if isinstance(getattr(teacher, "backbone", None), nn.Module) else None

    def _ce(self, logits: Tensor, masks: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), masks, ignore_index=self.cfg.data.ignore_index)

    @staticmethod
    def _training_batch(batch: Batch) -> tuple[Tensor, Tensor]:
        images, masks = batch
        if isinstance(images, list):
            stack_images(images)  # raises: a training batch needs one size (data.crop_size)
        return images, masks

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, masks = self._training_batch(batch)
        return {"loss_ce": self._ce(self.logits(model(images), masks.shape[-2:]), masks)}

    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, masks = self._training_batch(batch)
        out, losses = distiller(images, loss_context=self.loss_context(batch))
        return {"loss_ce": self._ce(self.logits(out, masks.shape[-2:]), masks), **losses}

    def loss_context(self, batch: Batch) -> dict[str, Any]:
        masks = batch[1]
        return {"target": masks.masked_fill(masks == self.cfg.data.ignore_index, -1)}

    def _predictions(self, model: nn.Module, images: Tensor | list[Tensor]) -> Tensor | list[Tensor]:
        """Class ids per pixel at each image's size: one pass for a stacked batch, one per image otherwise."""
        key = self.cfg.model.output_key
        if isinstance(images, list):
            return [segment_logits(model, im[None], self.cfg.eval, key).argmax(1)[0] for im in images]
        return segment_logits(model, images, self.cfg.eval, key).argmax(1)

    def scorer(self) -> Scorer:
        return _SegmentationScorer(self)

    def image_scores(self, batch: Batch, predictions: Any) -> Tensor:
        """Pixel accuracy of each image over its labelled pixels (0 for an image without any)."""
        ignore = self.cfg.data.ignore_index
        scores = []
        for pred, mask in zip(predictions, batch[1], strict=True):
            valid = mask != ignore
            hits = ((pred == mask) & valid).sum()
            scores.append(hits.double() / valid.sum().clamp_min(1))
        return torch.stack(scores).cpu()

    def ensemble(self, outputs: Sequence[Any]) -> Tensor:
        """Mean of the softmax probabilities, as logits (their log)."""
        logits = []
        for out in outputs:
            t = output_item(out, self.cfg.model.output_key)
            logits.append(self.logits(out, t.shape[-2:] if isinstance(t, Tensor) else ()))
        return mean_probabilities(logits)

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        return self._predictions(model, batch[0])

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path:
        images, masks = batch
        ignore = self.cfg.data.ignore_index
        if isinstance(images, list):
            images, masks = pad_stack([im.cpu() for im in images], [m.cpu() for m in masks], ignore)
            _, predictions = pad_stack([im.cpu() for im in batch[0]], [p.cpu() for p in predictions], ignore)
        return plot_segmentation(
            images.cpu(), predictions.cpu(), masks.cpu(), out_png, class_names=self.class_names, ignore_index=ignore
        )


class _SegmentationScorer:
    """mIoU from one confusion matrix over every image's prediction at its own size."""

    def __init__(self, task: SegmentationTask) -> None:
        self.task = task
        self.metric = SegmentationMetric(task.num_classes, ignore_index=task.cfg.data.ignore_index)

    def update(self, batch: Batch, predictions: Any) -> None:
        masks = batch[1]
        if isinstance(predictions, list) or isinstance(masks, list):
            for pred, mask in zip(predictions, masks, strict=True):
                self.metric.update(pred[None], mask[None])
        else:
            self.metric.update(predictions, masks)

    def compute(self) -> dict[str, float]:
        metric = self.metric
        metric.sync()
        result = metric.compute()
        out = {
            "miou": float(result["miou"]),  # type: ignore[arg-type]
            "pixel_acc": float(result["pixel_acc"]),  # type: ignore[arg-type]
            "predicted_classes": metric.predicted_classes(),
        }
        for name, iou in zip(self.task.class_names, result["per_class_iou"], strict=True):  # type: ignore[arg-type]
            out[f"iou/{name}"] = float(iou)
        return out
