"""The data loaders of a run: a resumable, sharded training order and loaders that touch no global RNG."""

from __future__ import annotations

from collections.abc import Callable, Sized
from typing import Any, cast

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from ..errors import DataError
from .distributed import DistContext
from .sampling import EvalShardSampler, ResumableSampler


def training_sampler(train: Dataset, batch_size: int, seed: int, ctx: DistContext) -> tuple[ResumableSampler, int, int]:
    """(sampler, batch size per rank, batches per epoch) for the global ``batch_size``.

    The order of an epoch is a function of ``(seed, epoch)`` and can start mid-epoch, so a resumed
    run draws the batches an uninterrupted run would have drawn.
    """
    per_rank = batch_size // ctx.world_size
    if per_rank < 1 or batch_size % ctx.world_size:
        raise DataError(f"data.batch_size {batch_size} is not divisible by {ctx.world_size} processes")
    sampler = ResumableSampler(train, ctx.world_size, ctx.rank, seed, shuffle=True, drop_last=True)
    if len(sampler) < per_rank:
        raise DataError(f"{len(cast(Sized, train))} training samples cannot fill one batch of {batch_size}")
    return sampler, per_rank, len(sampler) // per_rank


def eval_sampler(val: Dataset, ctx: DistContext) -> EvalShardSampler:
    """Every evaluation sample exactly once across ranks."""
    return EvalShardSampler(len(cast(Sized, val)), ctx.world_size, ctx.rank)


def make_loader(
    dataset: Dataset,
    sampler: Sampler,
    batch_size: int,
    *,
    collate: Callable[[list[Any]], Any],
    num_workers: int,
    drop_last: bool,
    pin_memory: bool,
    seed: int,
    epoch: int = 0,
) -> DataLoader:
    """A ``DataLoader`` with its own generator, seeded from ``(seed, epoch)``.

    Creating an iterator would otherwise draw from the global RNG, and a resumed run creates one
    at a different step than an uninterrupted run. Workers are not kept across epochs: the dataset
    learns the epoch in the main process (its augmentation seeds depend on it), and a persistent
    worker would keep a stale copy.
    """
    gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        sampler=sampler,
        collate_fn=collate,
        num_workers=num_workers,
        drop_last=drop_last,
        pin_memory=pin_memory,
        generator=gen,
    )


__all__ = ["eval_sampler", "make_loader", "training_sampler"]
