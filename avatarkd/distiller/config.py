"""Declarative distiller configuration (YAML -> pydantic), validated before anything is built.

Loss names map to plain functions or modules in one explicit table; hyperparameters are checked
against the loss's signature at validation time so a typo fails in the first second, not after
an hour of training.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from collections.abc import Callable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..akd import AvatarLoss, check_kwargs
from ..avatars import Perturbation
from ..losses import MGD, MasKD, cwd, dkd, kd, l1, mse, pkd, smooth_l1
from ..uncertainty import UncertaintyMode
from .distiller import DistillPoint

FUNCTION_LOSSES: dict[str, Callable[..., Any]] = {
    "mse": mse, "cwd": cwd, "kd": kd, "dkd": dkd, "pkd": pkd, "l1": l1, "smooth_l1": smooth_l1,
}
MODULE_LOSSES: dict[str, type] = {"mgd": MGD, "maskd": MasKD}
LossName = Literal["mse", "cwd", "kd", "dkd", "pkd", "l1", "smooth_l1", "mgd", "maskd"]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class AKDConfig(Strict):
    """Avatar settings; ``enabled: false`` gives the plain base loss (the 'base KD' arm)."""

    enabled: bool = True
    num_avatars: int = Field(1, ge=1, le=64)
    perturbation: Perturbation = "dropout"
    p: float = Field(0.1, ge=0.0)
    uncertainty: UncertaintyMode = "variance"
    momentum: float = Field(0.1, gt=0.0, le=1.0)

    @model_validator(mode="after")
    def _dropout_range(self) -> AKDConfig:
        if self.perturbation.endswith("dropout") and self.p >= 1.0:
            raise ValueError(f"drop probability p must be < 1, got {self.p}")
        return self


class PointConfig(Strict):
    name: str
    student: str
    teacher: str | None = None  # defaults to the student path
    loss: LossName = "mse"
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0.0)
    key: str | int | None = None
    connector_bn: bool = False
    akd: AKDConfig | None = None  # overrides the distiller-wide setting for this point

    @model_validator(mode="after")
    def _check_loss_kwargs(self) -> PointConfig:
        if self.loss in FUNCTION_LOSSES:
            check_kwargs(FUNCTION_LOSSES[self.loss], self.loss_kwargs, f"loss {self.loss!r}")
        else:
            cls = MODULE_LOSSES[self.loss]
            params = list(inspect.signature(cls.__init__).parameters)[2:]  # self, channels
            params = [p for p in params if p != "generator"]
            for key in self.loss_kwargs:
                if key not in params:
                    raise ValueError(f"loss {self.loss!r} got an unknown hyperparameter {key!r}; accepted: {', '.join(params)}")
        return self


class DistillerConfig(Strict):
    points: list[PointConfig] = Field(min_length=1)
    akd: AKDConfig = Field(default_factory=AKDConfig)
    teacher_cache: Path | None = Field(
        None, description="directory for the frozen teacher's features, reused whenever the teacher sees an input "
        "again (every epoch after the first); keyed by teacher weights, points and input content")

    @field_validator("points")
    @classmethod
    def _unique(cls, points: list[PointConfig]) -> list[PointConfig]:
        names = [p.name for p in points]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"point names must be unique; repeated: {dupes}")
        return points


def _wrap(base: Any, akd: AKDConfig, generator: torch.Generator | None, kwargs: dict[str, Any]) -> Any:
    if not akd.enabled:
        return AvatarLoss(base, num_avatars=1, p=0.0, uncertainty="none", base_kwargs=kwargs)
    return AvatarLoss(
        base, num_avatars=akd.num_avatars, perturbation=akd.perturbation, p=akd.p,
        uncertainty=akd.uncertainty, momentum=akd.momentum, generator=generator, base_kwargs=kwargs,
    )


def build_points(cfg: DistillerConfig, generator: torch.Generator | None = None) -> list[DistillPoint]:
    """DistillPoints from a validated config; module losses are built per level from channels."""
    points = []
    for pc in cfg.points:
        akd = pc.akd or cfg.akd
        common = dict(name=pc.name, student=pc.student, teacher=pc.teacher or pc.student,
                      weight=pc.weight, key=pc.key, connector_bn=pc.connector_bn)
        if pc.loss in FUNCTION_LOSSES:
            loss = _wrap(FUNCTION_LOSSES[pc.loss], akd, generator, dict(pc.loss_kwargs))
            points.append(DistillPoint(loss=loss, **common))
        else:
            cls, kw = MODULE_LOSSES[pc.loss], dict(pc.loss_kwargs)
            if cls is MGD:
                kw["generator"] = generator

            def factory(channels: int, cls: type = cls, kw: dict = kw, akd: AKDConfig = akd) -> Any:
                return _wrap(cls(channels, **kw), akd, generator, {})

            points.append(DistillPoint(loss_factory=factory, **common))
    return points
