"""Semantic segmentation: image + PNG label-mask folders, cross-entropy, mIoU."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig
from ..data import SegmentationFolder
from ..errors import ConfigError
from ..metrics import SegmentationMetric
from ..models import build_segmenter, describe_output, normalize_images
from .base import Batch, Task, TeacherForward
from .drawing import plot_segmentation


def _class_names_from_coco(path: Path) -> list[str] | None:
    if not path.is_file():
        return None
    cats = sorted(json.loads(path.read_text()).get("categories", []), key=lambda c: c["id"])
    return ["background"] + [c["name"] for c in cats]


def backbone_only(teacher: nn.Module, images: Tensor) -> Any:
    """The teacher's backbone alone: all that backbone points need (no head, no upsampling).

    The teacher's input normalisation is a pre-hook on the whole model, so it is applied here too.
    """
    return teacher.backbone(normalize_images(teacher, images))


class SegmentationTask(Task):
    name = "segmentation"
    primary_metric = "miou"
    context_keys = ("target",)  # the label mask (N, H, W), ignored pixels as -1

    def datasets(self, data: DataConfig) -> tuple[Dataset, Dataset]:
        names = _class_names_from_coco(self.data_path(data.val_annotations, "val", "annotations.json"))
        if data.num_classes is not None:
            self.num_classes = data.num_classes
            names = names if names and len(names) == data.num_classes else None
        elif names:
            self.num_classes = len(names)
        else:
            raise ConfigError("data.num_classes: set it (classes incl. background) for your segmentation data")
        self.class_names = names or [str(i) for i in range(self.num_classes)]
        common = dict(ignore_index=data.ignore_index, num_classes=self.num_classes, class_names=self.class_names)
        train = SegmentationFolder(self.data_path(data.train_images, "train", "images"),
                                   self.data_path(data.train_masks, "train", "masks"), hflip=data.hflip, **common)
        val = SegmentationFolder(self.data_path(data.val_images, "val", "images"),
                                 self.data_path(data.val_masks, "val", "masks"), **common)
        return train, val

    def build_model(self, mcfg: ModelConfig) -> nn.Module:
        if mcfg.factory is not None:
            return self.factory_model(mcfg, self.num_classes)
        return build_segmenter(mcfg.arch, mcfg.backbone, self.num_classes, mcfg.output_stride)  # type: ignore[arg-type]

    def logits(self, output: Any, size: tuple[int, ...] | torch.Size) -> Tensor:
        """The output contract: (N, C, h, w) logits, or a dict with them under ``"out"``, at any resolution;
        upsampled (bilinear) to ``size``, the mask's. Anything else is a one-line ConfigError."""
        out = output.get("out") if isinstance(output, Mapping) else output
        if not (isinstance(out, Tensor) and out.dim() == 4 and out.shape[1] == self.num_classes):
            raise ConfigError(f"model output: segmentation expects (N, {self.num_classes}, H, W) logits at any resolution, "
                              f"or a dict holding them under 'out'; the model returned {describe_output(output)}")
        if tuple(out.shape[-2:]) != tuple(size):
            out = F.interpolate(out, size=tuple(size), mode="bilinear", align_corners=False)
        return out

    def check_eval_output(self, output: Any, batch: Batch) -> None:
        self.logits(output, batch[1].shape[-2:])

    def backbone_forward(self, teacher: nn.Module) -> TeacherForward | None:
        return backbone_only if isinstance(getattr(teacher, "backbone", None), nn.Module) else None

    def _ce(self, logits: Tensor, masks: Tensor) -> Tensor:
        return F.cross_entropy(logits.float(), masks, ignore_index=self.cfg.data.ignore_index)

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, masks = batch
        return {"loss_ce": self._ce(self.logits(model(images), masks.shape[-2:]), masks)}

    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, masks = batch
        out, losses = distiller(images, loss_context=self.loss_context(batch))
        return {"loss_ce": self._ce(self.logits(out, masks.shape[-2:]), masks), **losses}

    def loss_context(self, batch: Batch) -> dict[str, Any]:
        masks = batch[1]
        return {"target": masks.masked_fill(masks == self.cfg.data.ignore_index, -1)}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        metric = SegmentationMetric(self.num_classes, ignore_index=self.cfg.data.ignore_index)
        for batch in batches:
            images, masks = self.to_device(batch, device)
            metric.update(self.logits(model(images), masks.shape[-2:]).argmax(1), masks)
        metric.sync()
        result = metric.compute()
        out = {"miou": float(result["miou"]), "pixel_acc": float(result["pixel_acc"])}
        for name, iou in zip(self.class_names, result["per_class_iou"]):
            out[f"iou/{name}"] = float(iou)
        return out

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        return self.logits(model(batch[0]), batch[1].shape[-2:]).argmax(1)

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path:
        images, masks = batch
        return plot_segmentation(images.cpu(), predictions.cpu(), masks.cpu(), out_png,
                                 class_names=self.class_names, ignore_index=self.cfg.data.ignore_index)
