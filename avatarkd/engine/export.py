"""Deployment export: the student alone (no teacher, no connectors, no loss modules)."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_torch_save, atomic_write, atomic_write_json
from ..config import TrainConfig

log = logging.getLogger(__name__)


def export_student(model: nn.Module, path: Path, cfg: TrainConfig, class_names: list[str],
                   torchscript: bool = False, example: Any = None) -> Path:
    """A plain ``state_dict`` file loadable with ``model.load_state_dict(torch.load(path))``.

    A JSON sidecar records how to build the architecture with torchvision parts.
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)
    meta = {"task": cfg.task, "model": json.loads(cfg.model.model_dump_json()), "class_names": class_names,
            "builder": "avatarkd.models", "num_parameters": sum(v.numel() for v in state.values())}
    atomic_write_json(path.with_suffix(".json"), meta)
    if torchscript:
        model = model.eval()
        scripted = torch.jit.script(model)
        ts_path = path.with_suffix(".ts")
        atomic_write(ts_path, lambda f: torch.jit.save(scripted, f), fsync=True)
        log.info("wrote TorchScript %s", ts_path)
    log.info("exported student weights to %s", path)
    return path
