"""The one ``torch.load`` of the package: tensors only, unless the user trusts that file.

``torch.load(weights_only=False)`` runs whatever the file's pickle says, so a teacher checkpoint
from the internet could run code. Every file avatarkd reads (weights, its own checkpoints and
exports, teacher-cache entries) goes through ``load_torch_file``, which loads with
``weights_only=True`` and unpickles only where the caller passes ``allow_pickle=True`` (the user's
``model.allow_pickle`` / ``teacher.allow_pickle``), with a warning naming the file. avatarkd's own
files hold tensors, numbers, strings and containers only, so they never need that.

The NumPy types allowlisted below (an array and its dtype: data, no code) are what checkpoints
written before RNG states were stored as tensors hold; they keep resuming.
"""

from __future__ import annotations

import logging
import pickle
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .errors import CheckpointError

log = logging.getLogger(__name__)


def _numpy_data_types() -> list[Any]:
    """An ndarray's reconstruction: what older checkpoints' NumPy RNG states pickle (data only)."""
    core = getattr(np, "_core", None) or np.core  # NumPy 2 moved it; 1.x has np.core
    found: list[Any] = [core.multiarray._reconstruct, np.ndarray, np.dtype]
    found += [getattr(np.dtypes, n) for n in ("UInt32DType", "Int64DType", "Float64DType") if hasattr(np, "dtypes")]
    return found


_SAFE_DATA = _numpy_data_types()


def _needs_pickle(err: BaseException) -> bool:
    """Whether ``weights_only=True`` refused the file's contents (rather than failed to read it)."""
    return isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err)


def _objects_in(path: Path) -> str:
    """The Python objects a file would build beyond tensors (for the error line), if torch can tell."""
    try:
        names = sorted(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:
        return ""
    if not names:
        return ""
    more = f", +{len(names) - 3} more" if len(names) > 3 else ""
    return f" ({', '.join(names[:3])}{more})"


def load_torch_file(
    path: str | Path,
    *,
    allow_pickle: bool = False,
    option: str | None = None,
    map_location: Any = "cpu",
    what: str = "checkpoint",
) -> Any:
    """``torch.load`` with ``weights_only=True``; one-line ``CheckpointError`` for a missing or unreadable file.

    A file that holds pickled Python objects (a whole ``nn.Module``, a foreign trainer's state) is
    refused with one line naming ``option`` (e.g. ``teacher.allow_pickle``), the setting with which
    the user says they trust that file; with ``allow_pickle`` it is unpickled and a warning logged.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} not found: {path}")
    try:
        with torch.serialization.safe_globals(_SAFE_DATA):
            return torch.load(path, map_location=map_location, weights_only=True)
    except Exception as err:
        if not _needs_pickle(err):
            raise CheckpointError(
                f"{path}: not a readable {what} (truncated or corrupted?): {type(err).__name__}"
            ) from None
    if not allow_pickle:
        hint = f"set {option}: true if you trust this file" if option else "this file is not one avatarkd wrote"
        raise CheckpointError(
            f"{path}: holds pickled Python objects{_objects_in(path)}, not only tensors, and unpickling "
            f"can run code from the file; {hint} (or re-save its state_dict)"
        )
    log.warning("unpickled %s (%s: true): it can run code; re-save its state_dict to avoid this", path, option)
    try:
        return torch.load(path, map_location=map_location, weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable {what} (truncated or corrupted?): {type(err).__name__}"
        ) from None


__all__ = ["load_torch_file"]
