"""Top-1 accuracy with the same update/sync/compute/reset interface as the other metrics."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ._dist import all_reduce_sum


class Top1Accuracy:
    """Fraction of samples whose predicted class equals the target, counted exactly across ranks."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.counts = torch.zeros(2, dtype=torch.int64)  # correct, total
        self._synced: Tensor | None = None

    @torch.no_grad()
    def update(self, pred: Tensor, target: Tensor) -> None:
        """``pred`` is either logits (N, C) — reduced by argmax — or class indices (N,)."""
        if pred.dim() == target.dim() + 1:
            pred = pred.argmax(1)
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} does not match target shape {tuple(target.shape)}")
        correct = (pred.long() == target.long()).sum().cpu()
        self.counts += torch.stack([correct, torch.tensor(target.numel())])
        self._synced = None

    def sync(self) -> None:
        self._synced = all_reduce_sum(self.counts)

    def compute(self) -> dict[str, float]:
        """``top1`` in [0, 1]; NaN before any sample was seen."""
        correct, total = (int(v) for v in (self._synced if self._synced is not None else self.counts))
        return {"top1": correct / total if total else math.nan}
