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
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..atomic import atomic_torch_save
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


class TeacherCache:
    """Per-sample teacher features under ``root/<teacher fingerprint>/``.

    Args:
        root: cache directory (created); safe to share between runs and processes.
        teacher: the frozen teacher, fingerprinted with ``context``.
        context: anything else that changes the features (point paths and keys, the teacher
            forward function); part of the fingerprint.
    """

    def __init__(self, root: str | Path, teacher: nn.Module, context: Iterable[Any] = ()) -> None:
        self.dir = Path(root) / fingerprint(teacher, *context)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.hits = 0
        self.misses = 0
        self._warned = False

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
        return {label: torch.stack([e[label] for e in per_sample]) for label in labels}

    def store(self, keys: Sequence[str], feats: Mapping[str, Tensor]) -> None:
        """Split ``feats`` along the batch and write one file per sample (atomically)."""
        for i, key in enumerate(keys):
            path = self._path(key)
            if path.is_file():
                continue
            # clone: saving a view would write the whole batch's storage into every file
            entry = {label: f[i].detach().clone() for label, f in feats.items()}
            atomic_torch_save(entry, path, fsync=False)  # a lost entry is only a future miss

    def _warn(self, message: str) -> None:
        if not self._warned:
            log.warning(message)
            self._warned = True

    @property
    def hit_rate(self) -> float:
        total = self.hits + self.misses
        return self.hits / total if total else 0.0
