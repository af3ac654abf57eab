"""Which classes a model predicts at all: the tell-tale of a collapsed model.

A model whose BatchNorm statistics are stale, whose learning rate is too high, or that never got
past "everything is background" predicts one class for every input. Its accuracy can still look
plausible (the majority class), so the engine warns when this count is 1.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._dist import all_reduce_sum


class PredictedClasses:
    """Counts, over all ranks, how often each class id was predicted."""

    def __init__(self, num_classes: int) -> None:
        self.counts = torch.zeros(num_classes, dtype=torch.int64)
        self._synced: Tensor | None = None

    @torch.no_grad()
    def update(self, labels: Tensor) -> None:
        """Add predicted class ids (any shape); ids outside 0..num_classes-1 are ignored."""
        flat = labels.reshape(-1).long().cpu()
        flat = flat[(flat >= 0) & (flat < len(self.counts))]
        self.counts += torch.bincount(flat, minlength=len(self.counts))
        self._synced = None

    def sync(self) -> None:
        self._synced = all_reduce_sum(self.counts)

    def count(self) -> int:
        """How many distinct classes were predicted at least once."""
        counts = self._synced if self._synced is not None else self.counts
        return int((counts > 0).sum())
