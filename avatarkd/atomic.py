"""Writing files so that a reader never sees half of one.

Checkpoints, teacher-cache entries, pictures, JSON results and exported weights are all written
the same way: into a uniquely named temporary file in the destination folder, flushed (and, for
files whose loss would cost hours, fsync'ed), then renamed over the target. ``os.replace`` is
atomic on POSIX, so a kill mid-write leaves the previous file (or none), never a torn one, and
two writers of the same path cannot collide on a shared temporary name: the last rename wins
with a complete file.
"""

from __future__ import annotations

import io
import json
import math
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

import torch


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone gives 0600


def atomic_write(path: str | Path, write: Callable[[IO[bytes]], Any], *, fsync: bool = False) -> Path:
    """Call ``write(binary_file)`` on a temporary file, then rename it over ``path``.

    ``fsync`` forces the bytes to disk before the rename (for checkpoints: a power cut must not
    leave a renamed but empty file). The temporary file never outlives a failure.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, _FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def atomic_write_bytes(path: str | Path, data: bytes, *, fsync: bool = False) -> Path:
    return atomic_write(path, lambda f: f.write(data), fsync=fsync)


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def json_safe(obj: Any) -> Any:
    """NaN/Inf (e.g. the IoU of a class absent from the validation set) become null: valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: str | Path, obj: Any) -> Path:
    """Indented JSON that other tools can read (NaN/Inf as null, unknown types as strings)."""
    return atomic_write_text(path, json.dumps(json_safe(obj), indent=2, default=str) + "\n")


def torch_bytes(obj: Any) -> bytes:
    """What ``torch.save`` would write for ``obj``, in memory: to size an entry before writing it atomically."""
    buffer = io.BytesIO()
    torch.save(obj, buffer)
    return buffer.getvalue()


def atomic_torch_save(obj: Any, path: str | Path, *, fsync: bool = True) -> Path:
    """``torch.save`` through ``atomic_write`` (fsync'ed by default: checkpoints are expensive)."""
    return atomic_write(path, lambda f: torch.save(obj, f), fsync=fsync)
