"""Object detection: COCO-format data, torchvision detectors, COCO mAP from pycocotools."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset
from torchvision.ops import batched_nms, box_iou

from ..config import DataConfig, ModelConfig
from ..data import CocoDetection, SplitReport, collate_detection, innermost
from ..errors import ConfigError
from ..metrics import CocoEvaluator, PredictedClasses
from ..models import build_detector, describe_output
from .base import Batch, Scorer, Task, TeacherForward
from .drawing import plot_detections

ORACLE_SCORE = 0.5  # detections counted by the per-image oracle's score (image_scores)


def backbone_only(teacher: nn.Module, images: list[Tensor]) -> Any:
    """The teacher's transform + backbone/FPN: all that FPN-level points need (no heads, no NMS)."""
    backbone, transform = cast(nn.Module, teacher.backbone), cast(nn.Module, teacher.transform)
    return backbone(transform(images)[0].tensors)


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
            mcfg.fpn_channels,
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

    def scorer(self) -> Scorer:
        return _DetectionScorer(self)

    def image_scores(self, batch: Batch, predictions: Any) -> Tensor:
        """True positives at IoU 0.5 minus false positives, per image, over detections scoring ``ORACLE_SCORE`` or more.

        Greedy matching in order of score (COCO's rule): a detection is a true positive when an
        unmatched ground-truth box of its class overlaps it by IoU >= 0.5. Low-scoring detections
        are left out, since at the metric's full recall every image has dozens of false positives
        and the count would only say which Avatar detects least.
        """
        scores = []
        for pred, target in zip(predictions, batch[1], strict=True):
            keep = pred["scores"] >= ORACLE_SCORE
            boxes, labels = pred["boxes"][keep].cpu(), pred["labels"][keep].cpu()
            order = pred["scores"][keep].cpu().argsort(descending=True)
            gt_boxes, gt_labels = target["boxes"].cpu().reshape(-1, 4), target["labels"].cpu()
            iou = box_iou(boxes[order], gt_boxes) if len(order) and len(gt_boxes) else torch.zeros(len(order), 0)
            matched = torch.zeros(len(gt_boxes), dtype=torch.bool)
            tp = 0
            for row, label in zip(iou, labels[order], strict=True):
                ok = (row >= 0.5) & (gt_labels == label) & ~matched
                if bool(ok.any()):
                    matched[torch.where(ok, row, torch.full_like(row, -1.0)).argmax()] = True
                    tp += 1
            scores.append(float(2 * tp - len(order)))  # tp - fp
        return torch.tensor(scores, dtype=torch.float64)

    def ensemble(self, outputs: Sequence[Any]) -> list[dict[str, Tensor]]:
        """Every model's detections pooled per image and merged by class-wise NMS (IoU 0.5).

        At most as many are kept per image as the most any one model returned (the detector's own
        ``detections_per_img``), so identical models ensemble to exactly one of them.
        """
        per_model = [self.detections(out, len(outputs[0])) for out in outputs]
        merged = []
        for dets in zip(*per_model, strict=True):
            boxes = torch.cat([d["boxes"] for d in dets])
            scores = torch.cat([d["scores"] for d in dets])
            labels = torch.cat([d["labels"] for d in dets])
            limit = max(len(d["scores"]) for d in dets)  # as many as one model returns (its detections_per_img)
            keep = batched_nms(boxes, scores, labels, 0.5)[:limit]
            merged.append({"boxes": boxes[keep], "scores": scores[keep], "labels": labels[keep]})
        return merged

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


class _DetectionScorer:
    """COCO mAP (pycocotools) over the images seen, and how many classes were predicted at all."""

    def __init__(self, task: DetectionTask) -> None:
        self.evaluator = CocoEvaluator(task.val_dataset.coco, task.val_dataset.label_to_cat_id)
        self.predicted = PredictedClasses(task.num_classes + 1)  # labels 1..num_classes

    def update(self, batch: Batch, predictions: Any) -> None:
        self.evaluator.update([int(t["image_id"]) for t in batch[1]], predictions)
        for o in predictions:
            self.predicted.update(o["labels"])

    def compute(self) -> dict[str, float]:
        self.evaluator.sync()
        self.predicted.sync()
        return {
            **{k: float(v) for k, v in self.evaluator.compute().items()},
            "predicted_classes": self.predicted.count(),
        }
