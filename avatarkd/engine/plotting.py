"""The pictures of a finished run: training curves, predictions, and where the avatars disagree.

They ask the task for predictions and each ``AvatarLoss`` for its uncertainty through its public
methods (``uncertainty_state``, ``uncertainty_map``); a picture that fails is a warning, never a
failed run.
"""

from __future__ import annotations

import logging
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch import nn
from torch.utils.data import Dataset

from ..akd import AvatarLoss
from ..distiller import Distiller
from ..plots import plot_training_curves, plot_uncertainty
from ..tasks import Task

log = logging.getLogger(__name__)


def plot_run(
    out: Path, task: Task, model: nn.Module, val_set: Dataset, device: torch.device, distiller: Distiller | None
) -> None:
    """``curves.png``, ``predictions.png`` (first validation images) and, when distilling, ``uncertainty.png``
    and ``uncertainty_maps.png`` into ``out``. Leaves ``model`` in eval mode."""
    try:
        plot_training_curves(out / "metrics.jsonl", out / "curves.png")
        batch = task.collate([val_set[i] for i in range(min(8, len(cast(Sized, val_set))))])
        batch = task.to_device(batch, device)
        model.eval()
        task.plot_predictions(batch, task.predict(model, batch), out / "predictions.png")
        if distiller is not None:
            plot_avatar_uncertainty(out, distiller, task.images_of(batch))
    except Exception as err:
        log.warning("plotting failed: %s", err)


def plot_avatar_uncertainty(out: Path, distiller: Distiller, images: Any) -> None:
    """Per-channel sigma of each AKD point, and the paper's picture: where, in one image, the avatars
    disagree with the teacher."""
    losses = {label: loss for label, loss in distiller.point_losses().items() if isinstance(loss, AvatarLoss)}
    sigmas = {
        label: state["sigma"]
        for label, loss in losses.items()
        if (state := loss.uncertainty_state())["sigma"] is not None
    }
    if sigmas:
        plot_uncertainty(sigmas, out / "uncertainty.png", title="per-channel sigma of the avatars")
    feats = distiller.teacher_features(images)
    maps = {
        label: m[0].cpu() for label, loss in losses.items() if (m := loss.uncertainty_map(feats[label][:1])) is not None
    }
    if maps:
        plot_uncertainty(
            maps, out / "uncertainty_maps.png", title="E_k (a_k - t)^2 per position, first validation image"
        )


__all__ = ["plot_avatar_uncertainty", "plot_run"]
