"""Deployment export: the student alone (no teacher, no connectors, no loss modules), in the user's format.

``student.pt`` is the model's own ``state_dict``: it loads with ``strict=True`` into what the
factory (or the torchvision/timm builder) makes, without avatarkd. ``student.json`` says how to
rebuild that module (``rebuild.factory`` + ``rebuild.kwargs``: call it and load the file), which
input normalisation it expects, and the class names.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..atomic import atomic_torch_save, atomic_write, atomic_write_json
from ..config import TrainConfig
from ..models import Normalization, attach_normalization, input_normalization, recipe_of

log = logging.getLogger(__name__)
_UNSET: Any = object()


def _input_note(model: nn.Module, norm: Normalization | None) -> str:
    """Where ``normalize`` goes when the module is rebuilt outside avatarkd."""
    if norm is None:
        return "float images in [0, 1], (N, C, H, W), as they are"
    if type(getattr(model, "transform", None)).__name__ == "GeneralizedRCNNTransform":
        return (
            "float images in [0, 1]; set model.transform.image_mean/image_std to 'normalize' (the detector normalises)"
        )
    return "float images in [0, 1], (N, C, H, W), normalised with 'normalize' before the model"


def _script(model: nn.Module) -> Any:
    """TorchScript of the user's module. avatarkd's normalisation pre-hook does not compile: it is left
    out (the sidecar's ``normalize`` says what to apply); a detector keeps it in its transform."""
    norm = input_normalization(model)
    if norm is None or type(getattr(model, "transform", None)).__name__ == "GeneralizedRCNNTransform":
        return torch.jit.script(model)
    attach_normalization(model, None)
    try:
        return torch.jit.script(model)
    finally:
        attach_normalization(model, norm)


def export_student(
    model: nn.Module,
    path: Path,
    cfg: TrainConfig,
    class_names: list[str],
    torchscript: bool = False,
    example: Any = None,
    normalization: Normalization | None = _UNSET,
) -> Path:
    """A plain ``state_dict`` file loadable with ``model.load_state_dict(torch.load(path))``, and its JSON sidecar.

    ``normalization``: the input normalisation to record; by default the one attached to ``model``.
    The sidecar's ``rebuild`` is ``{"factory": "package.module:callable", "kwargs": {...}}``;
    ``normalize`` is ``{"mean": [...], "std": [...]}`` or null (images in [0, 1] as they are).
    """
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    atomic_torch_save(state, path)
    norm = input_normalization(model) if normalization is _UNSET else normalization
    meta = {
        "task": cfg.task,
        "model": json.loads(cfg.model.model_dump_json()),
        "class_names": class_names,
        "rebuild": recipe_of(model),
        "normalize": norm.as_dict() if norm is not None else None,
        "input": _input_note(model, norm),
        "builder": "avatarkd.models",
        "num_parameters": sum(v.numel() for v in state.values()),
    }
    atomic_write_json(path.with_suffix(".json"), meta)
    if torchscript:
        scripted = _script(model.eval())
        ts_path = path.with_suffix(".ts")
        atomic_write(ts_path, lambda f: torch.jit.save(scripted, f), fsync=True)
        log.info("wrote TorchScript %s", ts_path)
    log.info("exported student weights to %s", path)
    return path
