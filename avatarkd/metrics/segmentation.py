"""Semantic segmentation quality from one accumulated confusion matrix.

A confusion matrix is exact under summation, so per-rank matrices can be all-reduced and give
the same mIoU as a single-process evaluation — unlike averaging per-batch IoUs.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._dist import all_reduce_sum


class SegmentationMetric:
    """mIoU, pixel accuracy and per-class IoU over all pixels seen (rows: target, columns: prediction).

    A class absent from both predictions and targets has an undefined IoU (NaN) and is left out
    of the mean, so that evaluating on a subset does not reward or punish unseen classes.
    """

    def __init__(self, num_classes: int, ignore_index: int | None = 255) -> None:
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.reset()

    def reset(self) -> None:
        self.confusion = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64)
        self._synced: Tensor | None = None

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """Add label maps ``pred`` and ``target`` of the same shape (e.g. N,H,W); ignored pixels skipped."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} differs from target shape {tuple(target.shape)}")
        pred, target = pred.reshape(-1).long(), target.reshape(-1).long()
        if self.ignore_index is not None:
            keep = target != self.ignore_index
            pred, target = pred[keep], target[keep]
        n = self.num_classes
        for name, labels in (("target", target), ("prediction", pred)):
            if labels.numel() and (int(labels.min()) < 0 or int(labels.max()) >= n):
                raise ValueError(
                    f"{name} holds class ids outside 0..{n - 1} "
                    f"(min {int(labels.min())}, max {int(labels.max())}); ignore_index is {self.ignore_index}"
                )
        counts = torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)
        if self.confusion.device != counts.device:
            self.confusion = self.confusion.to(counts.device)
        self.confusion += counts
        self._synced = None

    def sync(self) -> None:
        """Sum the matrices of all ranks; safe to call twice (the local matrix is kept separately)."""
        self._synced = all_reduce_sum(self.confusion)

    def predicted_classes(self) -> int:
        """How many classes were predicted for at least one (non-ignored) pixel."""
        matrix = self._synced if self._synced is not None else self.confusion
        return int((matrix.sum(0) > 0).sum())

    def compute(self) -> dict[str, float | list[float]]:
        """``miou``, ``pixel_acc`` and ``per_class_iou`` (NaN where undefined); NaN throughout if no pixel was seen."""
        matrix = (self._synced if self._synced is not None else self.confusion).double().cpu()
        tp = matrix.diag()
        union = matrix.sum(0) + matrix.sum(1) - tp
        iou = torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, math.nan))
        total = matrix.sum()
        present = ~iou.isnan()
        return {
            "miou": float(iou[present].mean()) if bool(present.any()) else math.nan,
            "pixel_acc": float(tp.sum() / total) if total > 0 else math.nan,
            "per_class_iou": [float(v) for v in iou],
        }
