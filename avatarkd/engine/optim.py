"""The optimiser, learning-rate schedule, mixed precision and gradient scaler of a run, from ``optim:``/``train:``."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

from ..config import TrainConfig
from ..errors import AvatarKDError

log = logging.getLogger(__name__)


def lr_lambda(cfg: TrainConfig) -> Callable[[int], float]:
    """The schedule's factor per step: linear warm-up, then constant or cosine to zero at ``train.steps``."""
    total, warm = cfg.train.steps, cfg.optim.warmup_steps

    def factor(step: int) -> float:
        if warm and step < warm:
            return (step + 1) / warm
        if cfg.optim.schedule == "constant":
            return 1.0
        progress = (step - warm) / max(1, total - warm)
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))

    return factor


@dataclass
class Optimisation:
    """Everything that updates the weights; each part has a ``state_dict`` that checkpoints carry."""

    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LambdaLR
    scaler: torch.amp.GradScaler
    amp_dtype: torch.dtype | None


def build_optimisation(cfg: TrainConfig, params: Iterable[torch.nn.Parameter], device: torch.device) -> Optimisation:
    """SGD or AdamW over ``params`` (one fused kernel where available), the schedule, AMP and the scaler."""
    o = cfg.optim
    listed = list(params)

    def make(fused: bool | None = None, foreach: bool | None = None) -> torch.optim.Optimizer:
        if o.name == "sgd":
            return torch.optim.SGD(
                listed, lr=o.lr, momentum=o.momentum, weight_decay=o.weight_decay, fused=fused, foreach=foreach
            )
        return torch.optim.AdamW(listed, lr=o.lr, weight_decay=o.weight_decay, fused=fused, foreach=foreach)

    try:  # one fused kernel for all parameters (CPU and CUDA) instead of a Python loop over them
        optimizer = make(fused=True)
    except (RuntimeError, ValueError, TypeError) as err:
        log.debug("fused %s unavailable (%s); using the foreach implementation", o.name, err)
        optimizer = make(foreach=True)
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(cfg))
    amp = cfg.train.amp
    amp_dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(amp)
    if amp == "fp16" and device.type != "cuda":
        raise AvatarKDError("train.amp: fp16 needs a CUDA device; use bf16 on CPU")
    scaler = torch.amp.GradScaler("cuda", enabled=amp == "fp16")
    return Optimisation(optimizer, scheduler, scaler, amp_dtype)


__all__ = ["Optimisation", "build_optimisation", "lr_lambda"]
