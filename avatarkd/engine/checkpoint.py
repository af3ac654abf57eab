"""Checkpoints that survive crashes: atomic writes, keep-last-N, readable errors on load.

A checkpoint holds everything needed to continue bit-exactly: student, connectors and loss
modules (MGD generators, MasKD tokens, uncertainty estimates), optimizer, LR schedule, grad scaler,
every RNG state (torch, CUDA, NumPy, Python, the avatar generator) and the data position.

Everything in it is a tensor, a number, a string or a container of those (the NumPy RNG state is
stored as a tensor, the config as a plain dict), so it loads with ``torch.load(weights_only=True)``:
resuming, ``eval`` and ``export`` never need to unpickle (``avatarkd.loading``).
"""

from __future__ import annotations

import logging
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..atomic import atomic_torch_save
from ..errors import AvatarKDError, CheckpointError
from ..loading import load_torch_file

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")


def _numpy_state() -> dict[str, Any]:
    """NumPy's global RNG state as a tensor and numbers: no ndarray, so no unpickling to read it back."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    words = torch.from_numpy(np.asarray(keys, dtype=np.int64))
    return {"bit_generator": name, "keys": words, "pos": int(pos), "has_gauss": int(has_gauss), "cached": float(cached)}


def _set_numpy_state(state: Any) -> None:
    if isinstance(state, dict):
        keys = state["keys"].numpy().astype(np.uint32)
        state = (state["bit_generator"], keys, state["pos"], state["has_gauss"], state["cached"])
    np.random.set_state(state)  # a tuple: a checkpoint written before the state was stored as a tensor


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    """Every random stream a step may draw from; ``random.getstate()`` is a tuple of ints already."""
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": _numpy_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["avatars"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    _set_numpy_state(state["numpy"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if generator is not None and "avatars" in state:
        generator.set_state(state["avatars"])


def checkpoint_dir(output_dir: Path) -> Path:
    return output_dir / "checkpoints"


def list_checkpoints(output_dir: Path) -> list[tuple[int, Path]]:
    folder = checkpoint_dir(output_dir)
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def find_resume(output_dir: Path, resume: bool | Path) -> Path | None:
    """The checkpoint a run continues from: a given file, the newest in ``output_dir``, or none.

    Without ``resume``, an ``output_dir`` that already holds checkpoints is refused, so that a
    second ``train`` never overwrites a run.
    """
    if isinstance(resume, Path):
        return resume
    found = list_checkpoints(output_dir)
    if resume:
        return found[-1][1] if found else None
    if found:
        raise AvatarKDError(
            f"{output_dir} already holds checkpoints; pass --resume to continue it or choose another output_dir"
        )
    return None


def save_checkpoint(output_dir: Path, step: int, state: dict[str, Any], keep_last: int) -> Path:
    path = checkpoint_dir(output_dir) / f"step_{step:07d}.pt"
    atomic_torch_save({"format": "avatarkd-checkpoint-1", "step": step, **state}, path)
    for _, old in list_checkpoints(output_dir)[:-keep_last]:
        old.unlink(missing_ok=True)
    log.info("saved checkpoint %s", path)
    return path


def load_file(path: Path) -> dict[str, Any]:
    """A training checkpoint, read without unpickling; one-line errors for a missing, truncated or foreign file."""
    obj = load_torch_file(path)
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict checkpoint, found {type(obj).__name__}")
    return obj


def load_checked(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path, role: str) -> None:
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(own[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        parts = []
        if wrong:
            k = wrong[0]
            parts.append(
                f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[k].shape)} vs model {tuple(own[k].shape)})"
            )
        if missing:
            parts.append(f"{len(missing)} missing keys (e.g. {missing[0]})")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})")
        raise CheckpointError(f"{path}: weights do not fit the {role} architecture: {'; '.join(parts)}")
    model.load_state_dict(state)
