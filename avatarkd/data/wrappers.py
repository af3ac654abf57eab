"""Dataset wrappers: per-sample seeded augmentation, a fixed evaluation view, skipping unreadable files.

``Augmented`` gives every sample its own ``torch.Generator`` seeded from ``(seed, epoch, index)``.
The augmentation of a sample is then a function of those three numbers alone: the same with 0 or
8 workers, on any rank, and after a resume, with no global RNG touched or re-seeded.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import torch
from torch.utils.data import Dataset

from ..errors import DataError
from .io import UnreadableError

log = logging.getLogger(__name__)


_U64 = 2**64 - 1


def _splitmix64(x: int) -> int:
    """SplitMix64's output function (Steele, Lea & Flood 2014): a bijection of 64-bit integers that
    mixes every input bit into every output bit (it passes BigCrush as a generator)."""
    x = (x + 0x9E3779B97F4A7C15) & _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return x ^ (x >> 31)


def sample_seed(seed: int, epoch: int, index: int) -> int:
    """A 64-bit seed mixing the three numbers: a function of them alone.

    Chained SplitMix64 (each step a bijection): for one seed and epoch, different indices give
    different seeds, and pairs from different epochs collide with probability about 2^-64. A few
    integer operations (about a microsecond), where NumPy's ``SeedSequence`` took about 60.
    """
    h = _splitmix64(seed & _U64)
    h = _splitmix64(h ^ (epoch & _U64))
    return _splitmix64(h ^ (index & _U64))


def sample_generator(seed: int, epoch: int, index: int) -> torch.Generator:
    return torch.Generator().manual_seed(sample_seed(seed, epoch, index))


class _Wrapper(Dataset):
    """Shares length and the class information of the wrapped dataset."""

    def __init__(self, dataset: Dataset) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    @property
    def class_names(self) -> list[str]:
        return list(getattr(self.dataset, "class_names", []))

    @property
    def num_classes(self) -> int:
        return int(getattr(self.dataset, "num_classes", 0))


class Augmented(_Wrapper):
    """``transform(*dataset[index], generator=g)`` with ``g`` seeded from ``(seed, epoch, index)``.

    Call ``set_epoch`` (or ``data.set_epoch`` on a stack of wrappers) before each epoch; a loader
    whose workers outlive the epoch (``persistent_workers``) would keep the old epoch in its copies.
    """

    def __init__(self, dataset: Dataset, transform: Callable[..., Any], seed: int) -> None:
        super().__init__(dataset)
        self.transform = transform
        self.seed = int(seed)
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        if item is None:  # dropped by SkipUnreadable
            return None
        return self.transform(*item, generator=sample_generator(self.seed, self.epoch, index))


class Mapped(_Wrapper):
    """A deterministic ``transform(*dataset[index])`` (evaluation views such as a centre crop)."""

    def __init__(self, dataset: Dataset, transform: Callable[..., Any]) -> None:
        super().__init__(dataset)
        self.transform = transform

    def __getitem__(self, index: int) -> Any:
        item = self.dataset[index]
        return None if item is None else self.transform(*item)


class SkipUnreadable(_Wrapper):
    """``data.skip_unreadable``: an image that cannot be decoded is skipped and logged, not fatal.

    Training (``replace=True``) takes the next readable sample instead, so every batch stays full
    and the choice is deterministic (resume stays exact); evaluation (``replace=False``) yields
    ``None``, which the tasks' collate functions drop, so no image is counted twice in a metric.
    A mask or annotation whose size disagrees with its image is unusable alike (``SizeMismatchError``
    is an ``UnreadableError``) and skipped the same way; other data errors (a mask value out of
    range) still stop the run.
    """

    def __init__(self, dataset: Dataset, replace: bool) -> None:
        super().__init__(dataset)
        self.replace = replace
        self.skipped: set[str] = set()

    def __getitem__(self, index: int) -> Any:
        size = len(self)
        for offset in range(size if self.replace else 1):
            try:
                return self.dataset[(index + offset) % size]
            except UnreadableError as err:
                if str(err) not in self.skipped:
                    self.skipped.add(str(err))
                    log.warning("skipped (data.skip_unreadable): %s", err)
        if self.replace:
            raise DataError(f"data.skip_unreadable: none of the {size} images can be read")
        return None


def set_epoch(dataset: Any, epoch: int) -> None:
    """``set_epoch`` on every wrapper in a stack (``Subset``, ``Augmented``, ...) that has one."""
    while dataset is not None:
        if hasattr(dataset, "set_epoch"):
            dataset.set_epoch(epoch)
        dataset = getattr(dataset, "dataset", None)


def innermost(dataset: Any) -> Any:
    """The dataset under every wrapper: the reader itself (for checks that must not augment or skip)."""
    while hasattr(dataset, "dataset"):
        dataset = dataset.dataset
    return dataset
