"""Checkpoints that survive crashes: atomic writes, keep-last-N, readable errors on load.

A checkpoint holds everything needed to continue bit-exactly: student, connectors and loss
modules (MGD generators, MasKD tokens, uncertainty estimates), optimizer, LR schedule, grad scaler,
every RNG state (torch, CUDA, NumPy, Python, the avatar generator) and the data position.
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

log = logging.getLogger(__name__)
_NAME = re.compile(r"^step_(\d+)\.pt$")


def rng_state(generator: torch.Generator | None = None) -> dict[str, Any]:
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state(),
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    if generator is not None:
        state["avatars"] = generator.get_state()
    return state


def set_rng_state(state: dict[str, Any], generator: torch.Generator | None = None) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
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
    """torch.load with one-line errors for a missing, truncated or foreign file."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted?): {type(err).__name__}"
        ) from None
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
