"""Deterministic, resumable data order.

The order of epoch ``e`` is a permutation seeded by ``(seed, e)``, sharded across ranks; a resumed
run skips the batches it already consumed. Augmentation of sample ``i`` in epoch ``e`` is seeded by
``(seed, e, i)`` in the data layer (``avatarkd.data.Augmented``), so it does not depend on worker
count, rank, or where the run was resumed.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch.utils.data import Dataset, DistributedSampler


class ResumableSampler(DistributedSampler):
    """A DistributedSampler (works with world size 1 too) that can start mid-epoch."""

    def __init__(
        self, dataset: Dataset, num_replicas: int, rank: int, seed: int, shuffle: bool = True, drop_last: bool = False
    ) -> None:
        super().__init__(dataset, num_replicas=num_replicas, rank=rank, shuffle=shuffle, seed=seed, drop_last=drop_last)
        self.skip = 0

    def set_position(self, epoch: int, skip_samples: int) -> None:
        self.set_epoch(epoch)
        self.skip = skip_samples

    def __iter__(self) -> Iterator[int]:
        indices = list(super().__iter__())
        return iter(indices[self.skip :])

    def __len__(self) -> int:
        return max(0, self.num_samples - self.skip)


class EvalShardSampler(torch.utils.data.Sampler[int]):
    """Every sample exactly once across ranks (no padding, so metrics count nothing twice)."""

    def __init__(self, size: int, num_replicas: int, rank: int) -> None:
        self.indices = list(range(rank, size, num_replicas))

    def __iter__(self) -> Iterator[int]:
        return iter(self.indices)

    def __len__(self) -> int:
        return len(self.indices)
