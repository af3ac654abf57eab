"""Teacher features cached on disk, keyed by what the teacher saw.

Why: the teacher is frozen and runs in eval mode, so what it produces for one sample is a pure
function of that sample's pixels (and, for detectors that pad a batch to a common size, of that
padded size). Every epoch after the first then reads the features instead of recomputing them,
which on a CPU is a large part of a distillation step. Keys are content hashes, not dataset
indices, so random augmentation is handled for free: a flipped image is a different key, and an
augmentation that never repeats (random crops) is simply never a hit. The one assumption is that
the teacher treats samples independently (no batch statistics, no cross-sample attention), which
holds for conv nets with BatchNorm in eval mode.

Entries are written atomically (temporary file + rename), so a killed run or several DDP ranks
writing the same key never leave a torn file; an unreadable entry counts as a miss.

The cache is bounded: at COCO resolution a RetinaNet teacher's five FPN levels are ~23 MB per
image in float32, so an unbounded cache fills a disk in one pass. ``max_bytes`` stops writing when
the directory would exceed it (logged once; ``unwritten`` counts what was left out, and a sample
that is not cached is only recomputed), ``dtype=torch.float16`` halves every entry, and
``expected_use`` gives the estimate logged at the start of a run. The storage dtype is part of the
fingerprint, so float16 entries are never read by a float32 cache.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_torch_save, atomic_write_bytes, torch_bytes
from ..loading import load_torch_file

log = logging.getLogger(__name__)


def fingerprint(teacher: nn.Module, *extra: Any) -> str:
    """Hash of the teacher's weights and buffers plus ``extra`` (points, forward function):
    a changed teacher or changed points must never read another teacher's features."""
    h = hashlib.sha256()
    for name, tensor in teacher.state_dict().items():
        h.update(name.encode() + _tensor_bytes(tensor))
    h.update(json.dumps([str(e) for e in extra]).encode())
    return h.hexdigest()[:20]


def _tensor_bytes(t: Tensor) -> bytes:
    t = t.detach().cpu().contiguous()
    return f"{t.dtype}:{tuple(t.shape)}:".encode() + t.reshape(-1).view(torch.uint8).numpy().tobytes()


BLOCK = 4096  # a file takes whole filesystem blocks: budgets count sizes rounded up to this


def on_disk(size: int) -> int:
    """Bytes a file of ``size`` bytes occupies (whole blocks): what a budget must count."""
    return -(-size // BLOCK) * BLOCK


def directory_bytes(root: Path) -> int:
    """What the files and folders under ``root`` occupy: files as ``on_disk`` counts them, a folder one block."""
    if not root.is_dir():
        return 0
    return sum(on_disk(p.stat().st_size) if p.is_file() else BLOCK for p in root.rglob("*"))


def expected_use(samples: int, draws: int, variants: int | None) -> tuple[int, float]:
    """(entries written, hit rate) over ``draws`` sample draws from ``samples`` training samples.

    ``variants``: how many different inputs the augmentation makes of one sample (1: fixed data,
    2: flips); ``None`` when every draw is new (random crops, scales, colour): nothing is ever hit.
    A sample drawn ``E`` times with ``v`` equally likely variants shows ``v (1 - (1 - 1/v)^E)`` of them.
    """
    if samples <= 0 or draws <= 0:
        return 0, 0.0
    if variants is None:
        return draws, 0.0
    per_sample = draws / samples
    distinct = min(per_sample, variants * (1.0 - (1.0 - 1.0 / variants) ** per_sample))
    return math.ceil(samples * distinct), max(0.0, 1.0 - distinct / per_sample)


class TeacherCache:
    """Per-sample teacher features under ``root/<teacher fingerprint>/``.

    Args:
        root: cache directory (created); safe to share between runs and processes.
        teacher: the frozen teacher, fingerprinted with ``context``.
        context: anything else that changes the features (point paths and keys, the teacher
            forward function); part of the fingerprint.
        max_bytes: the most the whole ``root`` may occupy (None: no bound). What it already holds
            is counted once, at the start; then this process's writes are counted.
        dtype: storage of floating features: ``torch.float32``, or ``torch.float16`` (half the disk;
            read back as float32).
        writers: processes sharing ``root`` (DDP ranks); each may write its share of what is left.
    """

    def __init__(
        self,
        root: str | Path,
        teacher: nn.Module,
        context: Iterable[Any] = (),
        *,
        max_bytes: int | None = None,
        dtype: torch.dtype = torch.float32,
        writers: int = 1,
    ) -> None:
        if dtype not in (torch.float32, torch.float16):
            raise ValueError(f"teacher-cache storage must be float32 or float16, got {dtype}")
        self.root = Path(root)
        self.dtype = dtype
        self.dir = self.root / fingerprint(teacher, *context, f"stored as {dtype}")
        self.dir.mkdir(parents=True, exist_ok=True)
        self.max_bytes = max_bytes
        self.allowance: int | None = None  # bytes this process may still write
        if max_bytes is not None:
            self.allowance = max(0, max_bytes - directory_bytes(self.root)) // max(1, writers)
        self.hits = 0
        self.misses = 0
        self.written = 0
        self.unwritten = 0  # entries left out because the budget was spent
        self._warned = False
        self._full = False

    # ------------------------------------------------------------------ keys
    @staticmethod
    def sample_keys(teacher_args: Sequence[Any]) -> list[str] | None:
        """One key per sample, or None when the arguments are not a batch we can split.

        Accepted: a single batched tensor ``(B, ...)``, or a single list/tuple of per-sample
        tensors (detection); for the latter the batch's largest size per dimension is part of
        the key, because the teacher pads the batch to it.
        """
        if len(teacher_args) != 1:
            return None
        arg = teacher_args[0]
        if isinstance(arg, Tensor) and arg.dim() >= 1:
            samples, context = list(arg.unbind(0)), f"batched{tuple(arg.shape[1:])}"
        elif isinstance(arg, (list, tuple)) and arg and all(isinstance(a, Tensor) for a in arg):
            if len({a.dim() for a in arg}) != 1:
                return None
            padded = tuple(max(a.shape[d] for a in arg) for d in range(arg[0].dim()))
            samples, context = list(arg), f"list{padded}"
        else:
            return None
        return [hashlib.sha256(context.encode() + _tensor_bytes(s)).hexdigest() for s in samples]

    def _path(self, key: str) -> Path:
        return self.dir / key[:2] / f"{key}.pt"

    # ------------------------------------------------------------------ read / write
    def load(self, keys: Sequence[str], labels: Sequence[str], device: torch.device) -> dict[str, Tensor] | None:
        """The batch's features (label -> tensor stacked over samples), or None on any miss."""
        per_sample: list[Mapping[str, Tensor]] = []
        for key in keys:
            path = self._path(key)
            if not path.is_file():
                self.misses += len(keys)
                return None
            try:
                entry = load_torch_file(path, map_location=device, what="teacher-cache entry")
            except Exception as err:
                self._warn(f"unreadable teacher-cache entry {path} ({err}); recomputing")
                self.misses += len(keys)
                return None
            if set(entry) != set(labels):
                self._warn(f"teacher-cache entry {path} holds {sorted(entry)}, expected {sorted(labels)}; recomputing")
                self.misses += len(keys)
                return None
            per_sample.append(entry)
        self.hits += len(keys)
        out = {label: torch.stack([e[label] for e in per_sample]) for label in labels}
        if self.dtype == torch.float16:
            out = {label: t.float() if t.is_floating_point() else t for label, t in out.items()}
        return out

    def entry(self, feats: Mapping[str, Tensor], i: int) -> dict[str, Tensor]:
        """Sample ``i`` of a batch's features as stored: a copy (saving a view would write the
        whole batch's storage into every file), floating tensors in the storage dtype."""
        return {
            label: f[i].detach().to(self.dtype, copy=True) if f.is_floating_point() else f[i].detach().clone()
            for label, f in feats.items()
        }

    def store(self, keys: Sequence[str], feats: Mapping[str, Tensor]) -> None:
        """Split ``feats`` along the batch and write one file per sample (atomically), within the budget."""
        for i, key in enumerate(keys):
            path = self._path(key)
            if path.is_file():
                continue
            entry = self.entry(feats, i)
            if self.allowance is None:
                atomic_torch_save(entry, path, fsync=False)  # a lost entry is only a future miss
                self.written += 1
                continue
            data = torch_bytes(entry)
            size = on_disk(len(data)) + (0 if path.parent.is_dir() else BLOCK)  # a new folder too
            if size > self.allowance:
                self.unwritten += 1
                if not self._full:
                    self._full = True
                    log.warning(
                        "teacher cache %s is full (distill.teacher_cache_max_gb: %.3g GB): no more entries are "
                        "written; features not in it are recomputed",
                        self.root,
                        (self.max_bytes or 0) / 1e9,
                    )
                continue
            atomic_write_bytes(path, data)
            self.allowance -= size
            self.written += 1

    def entry_bytes(self, feats: Mapping[str, Tensor]) -> int:
        """What one sample of ``feats`` occupies on disk as an entry (for the estimate at the start)."""
        return on_disk(len(torch_bytes(self.entry(feats, 0))))

    def summary(self) -> dict[str, Any]:
        """Counts for ``metrics.json`` and the end-of-run log."""
        return {
            "hits": self.hits,
            "misses": self.misses,
            "hit_rate": round(self.hit_rate, 4),
            "written": self.written,
            "not_written": self.unwritten,
        }

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
