"""DistillPoints from a validated ``distill:`` config section, through the loss registry."""

from __future__ import annotations

import functools
from typing import Any

import torch

from ..akd import AvatarLoss
from ..config.distill import AKDConfig, DistillerConfig
from ..registry import LOSSES, LossSpec
from .distiller import DistillPoint


def wrap_loss(base: Any, akd: AKDConfig, generator: torch.Generator | None, kwargs: dict[str, Any]) -> AvatarLoss:
    """The point's loss as AvatarLoss: AKD as configured, or the exact base loss when disabled."""
    if not akd.enabled:
        return AvatarLoss(base, num_avatars=1, p=0.0, uncertainty="none", base_kwargs=kwargs)
    return AvatarLoss(
        base,
        num_avatars=akd.num_avatars,
        perturbation=akd.perturbation,
        p=akd.p,
        uncertainty=akd.uncertainty,
        momentum=akd.momentum,
        generator=generator,
        base_kwargs=kwargs,
    )


def build_points(cfg: DistillerConfig, generator: torch.Generator | None = None) -> list[DistillPoint]:
    """One DistillPoint per configured point; per-level modules (MGD, MasKD) are built at ``Distiller.build``."""
    points = []
    for pc in cfg.points:
        spec = LOSSES.get(pc.loss)
        akd = pc.akd or cfg.akd
        kwargs = dict(pc.loss_kwargs)
        make = functools.partial(
            DistillPoint,
            name=pc.name,
            student=pc.student,
            teacher=pc.teacher or pc.student,
            weight=pc.weight,
            key=pc.key,
            student_key=pc.student_key,
            teacher_key=pc.teacher_key,
            connector_bn=pc.connector_bn,
        )
        if spec.channels:

            def factory(
                channels: int, label: str = "", spec: LossSpec = spec, kwargs: dict = kwargs, akd: AKDConfig = akd
            ) -> Any:
                return wrap_loss(spec.build(kwargs, channels, generator, label=label), akd, generator, {})

            points.append(make(loss_factory=factory))
        else:
            points.append(make(loss=wrap_loss(spec.build(kwargs), akd, generator, kwargs)))
    return points


def missing_context(cfg: DistillerConfig, provided: tuple[str, ...]) -> list[tuple[int, str, str]]:
    """(point index, loss, key) for every per-batch input a point's loss needs that is not ``provided``."""
    return [
        (i, pc.loss, key)
        for i, pc in enumerate(cfg.points)
        for key in LOSSES.get(pc.loss).context
        if key not in provided
    ]
