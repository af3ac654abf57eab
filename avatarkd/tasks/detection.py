"""Object detection: COCO-format data, torchvision detectors, COCO mAP from pycocotools."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from ..config import DataConfig, ModelConfig
from ..data import CocoDetection, SplitReport, collate_detection, innermost
from ..errors import ConfigError
from ..metrics import CocoEvaluator, PredictedClasses
from ..models import build_detector, describe_output
from .base import Batch, Task, TeacherForward
from .drawing import plot_detections


def backbone_only(teacher: nn.Module, images: list[Tensor]) -> Any:
    """The teacher's transform + backbone/FPN: all that FPN-level points need (no heads, no NMS)."""
    return teacher.backbone(teacher.transform(images)[0].tensors)


def configure_resize(model: nn.Module, data: DataConfig) -> nn.Module:
    """Sets the detector's own resize from ``data.min_size``/``data.max_size`` (if given).

    torchvision detectors resize inside ``model.transform``: the shorter side to ``min_size`` (one
    drawn per batch from a tuple while training: multi-scale; the last one in evaluation) unless
    the longer side would pass ``max_size``; after inference the boxes are mapped back to the
    original image, which is what COCO evaluation compares. Resizing in the data pipeline as well
    would resize twice. Without ``data.min_size`` the model keeps ``model.image_size``.
    """
    transform = getattr(model, "transform", None)
    sizes = data.min_sizes()
    if transform is None or (sizes is None and data.max_size is None):
        return model
    if sizes is not None:
        transform.min_size = sizes
    transform.max_size = data.max_size or (max(sizes) * 5 // 3 if sizes else transform.max_size)
    return model


class DetectionTask(Task):
    name = "detection"
    primary_metric = "map"

    def datasets(self, data: DataConfig) -> tuple[Dataset, Dataset]:
        train, evaluation = super().datasets(data)
        self.val_dataset: CocoDetection = innermost(evaluation)  # the COCO index the evaluator scores against
        return train, evaluation

    def check_reports(self, reports: list[SplitReport]) -> None:
        """Nothing to refuse: detectors resize and batch images of any size themselves."""

    def collate(self, batch: list[Any]) -> Batch:
        batch = [item for item in batch if item is not None]  # None: a skipped unreadable image
        return collate_detection(batch) if batch else None

    def to_device(self, batch: Batch, device: torch.device) -> Batch:
        images, targets = batch
        images = [im.to(device, non_blocking=True) for im in images]
        targets = [
            {k: v.to(device, non_blocking=True) if isinstance(v, Tensor) else v for k, v in t.items()} for t in targets
        ]
        return images, targets

    def build_model(self, mcfg: ModelConfig) -> nn.Module:
        if mcfg.factory is not None:  # torchvision's convention: num_classes counts the background
            return configure_resize(self.factory_model(mcfg, self.num_classes + 1), self.cfg.data)
        model = build_detector(
            mcfg.arch,
            mcfg.backbone,
            self.num_classes,
            mcfg.fpn_channels,  # type: ignore[arg-type]
            mcfg.image_size,
            tuple(mcfg.anchor_sizes),
        )
        return configure_resize(model, self.cfg.data)

    @staticmethod
    def loss_dict(output: Any) -> dict[str, Tensor]:
        """The training-mode contract: ``model(images, targets)`` returns a dict of loss tensors."""
        if not (isinstance(output, Mapping) and output and all(isinstance(v, Tensor) for v in output.values())):
            raise ConfigError(
                "model output: detection expects the torchvision detection API: in training, "
                f"model(images, targets) returns a dict of losses; the model returned {describe_output(output)}"
            )
        return {f"loss_{k}" if not k.startswith("loss") else k: v for k, v in output.items()}

    @staticmethod
    def detections(output: Any, count: int) -> list[dict[str, Tensor]]:
        """The eval-mode contract: ``model(images)`` returns one dict per image with boxes, scores and labels."""
        ok = (
            isinstance(output, (list, tuple))
            and len(output) == count
            and all(isinstance(o, Mapping) and {"boxes", "scores", "labels"} <= set(o) for o in output)
        )
        if not ok:
            raise ConfigError(
                f"model output: detection expects the torchvision detection API: in eval mode, "
                f"model(images) returns a list of {count} dicts with 'boxes', 'scores' and 'labels'; "
                f"the model returned {describe_output(output)}"
            )
        return list(output)

    def check_eval_output(self, output: Any, batch: Batch) -> None:
        self.detections(output, len(batch[0]))

    def backbone_forward(self, teacher: nn.Module) -> TeacherForward | None:
        has_parts = all(isinstance(getattr(teacher, a, None), nn.Module) for a in ("backbone", "transform"))
        return backbone_only if has_parts else None

    def losses(self, model: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, targets = batch
        return self.loss_dict(model(images, targets))

    def distill_losses(self, distiller: nn.Module, batch: Batch) -> dict[str, Tensor]:
        images, targets = batch
        task, losses = distiller(images, targets, teacher_args=(images,))
        return {**self.loss_dict(task), **losses}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        evaluator = CocoEvaluator(self.val_dataset.coco, self.val_dataset.label_to_cat_id)
        predicted = PredictedClasses(self.num_classes + 1)  # labels 1..num_classes
        for batch in batches:
            if batch is None:
                continue
            images, targets = self.to_device(batch, device)
            outputs = self.detections(model(images), len(images))
            evaluator.update(
                [int(t["image_id"]) for t in targets], [{k: v.cpu() for k, v in o.items()} for o in outputs]
            )
            for o in outputs:
                predicted.update(o["labels"])
        evaluator.sync()
        predicted.sync()
        return {**{k: float(v) for k, v in evaluator.compute().items()}, "predicted_classes": predicted.count()}

    @torch.no_grad()
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        return [{k: v.cpu() for k, v in o.items()} for o in self.detections(model(batch[0]), len(batch[0]))]

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path:
        images, targets = batch
        return plot_detections(
            [im.cpu() for im in images],
            predictions,
            [{k: v.cpu() for k, v in t.items() if k in ("boxes", "labels")} for t in targets],
            out_png,
            class_names=["background"] + self.class_names,
        )
