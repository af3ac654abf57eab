"""The ``distill:`` section: distillation points and AKD settings, validated before anything is built.

Loss names and hyperparameters are checked against the loss registry (``avatarkd.registry``), so a
typo fails in the first second, not after an hour of training, and a loss registered in user
code is accepted like a built-in one.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_core import PydanticCustomError

from ..naming import did_you_mean, repeated
from ..registry import LOSSES, PERTURBATIONS, UNCERTAINTY_MODES, Registry
from .base import Strict

# The names users write; the choices are the registries' (one class per perturbation in
# ``avatars.py``, per uncertainty mode in ``uncertainty.py``), checked by the validators below.
Perturbation = str
UncertaintyMode = str


def _choices(table: Registry[Any]) -> Callable[[dict[str, Any]], None]:
    """JSON-schema ``enum`` of a registry's names, read when the schema is generated (registered kinds included)."""
    return lambda schema: schema.update(enum=table.names())


def _registered_name(table: Registry[Any], name: str) -> str:
    if name not in table:
        raise PydanticCustomError(
            "literal_error",
            "Input should be one of {expected}{hint}",
            {"expected": ", ".join(repr(n) for n in table.names()), "hint": did_you_mean(name, table)},
        )
    return name


class AKDConfig(Strict):
    """Avatar settings; ``enabled: false`` gives the plain base loss (the 'base KD' arm)."""

    enabled: bool = True
    num_avatars: int = Field(1, ge=1, le=64)
    perturbation: Perturbation = Field("dropout", json_schema_extra=_choices(PERTURBATIONS))
    p: float = Field(0.1, ge=0.0)
    # "relative" was adopted from the evidence study (docs/results.md)
    uncertainty: UncertaintyMode = Field("relative", json_schema_extra=_choices(UNCERTAINTY_MODES))
    momentum: float = Field(0.1, gt=0.0, le=1.0)

    @field_validator("perturbation")
    @classmethod
    def _known_perturbation(cls, name: str) -> str:
        return _registered_name(PERTURBATIONS, name)

    @field_validator("uncertainty")
    @classmethod
    def _known_uncertainty(cls, name: str) -> str:
        return _registered_name(UNCERTAINTY_MODES, name)

    @model_validator(mode="after")
    def _p_range(self) -> AKDConfig:
        problem = PERTURBATIONS.get(self.perturbation).check_p(self.p)  # the perturbation knows its range
        if problem:
            raise ValueError(problem)
        return self


# which item of a module's output a point reads: a dict key, an attribute of a ModelOutput or a list
# index; a list is a path into nested outputs (``[hidden_states, 3]``)
OutputKey = str | int | list[str | int]


class PointConfig(Strict):
    """One distillation point: student and teacher module paths, a registered loss and its weight.

    ``key`` picks the same item of both outputs; ``student_key`` / ``teacher_key`` pick per side, for
    pairs whose modules return different containers (a user's tensor against a ``{"out": ...}`` dict,
    an smp encoder's list against a Hugging Face ``ModelOutput``).
    """

    name: str
    student: str
    teacher: str | None = None  # defaults to the student path
    loss: str = "mse"
    loss_kwargs: dict[str, Any] = Field(default_factory=dict)
    weight: float = Field(1.0, ge=0.0)
    key: OutputKey | None = None
    student_key: OutputKey | None = None
    teacher_key: OutputKey | None = None
    connector_bn: bool = False
    akd: AKDConfig | None = None  # overrides the distiller-wide setting for this point

    @field_validator("loss")
    @classmethod
    def _registered(cls, loss: str) -> str:
        if loss not in LOSSES:
            raise PydanticCustomError(
                "literal_error",
                "Input should be one of the registered losses {expected}{hint}",
                {"expected": ", ".join(repr(n) for n in LOSSES.names()), "hint": did_you_mean(loss, LOSSES)},
            )
        return loss

    @model_validator(mode="after")
    def _one_way_to_key(self) -> PointConfig:
        if self.key is not None and (self.student_key is not None or self.teacher_key is not None):
            raise ValueError("give 'key' (the same item of both outputs) or 'student_key'/'teacher_key', not both")
        return self

    @model_validator(mode="after")
    def _check_loss_kwargs(self) -> PointConfig:
        # deprecated names are mapped here, once, so builders only ever see current names
        self.loss_kwargs = LOSSES.get(self.loss).normalise_kwargs(self.loss_kwargs, f"loss {self.loss!r}")
        return self


class DistillerConfig(Strict):
    points: list[PointConfig] = Field(min_length=1)
    akd: AKDConfig = Field(default_factory=AKDConfig)
    teacher_cache: Path | None = Field(
        None,
        description="directory for the frozen teacher's features, reused whenever the teacher sees an input "
        "again (every epoch after the first); keyed by teacher weights, points and input content",
    )
    teacher_cache_max_gb: float | None = Field(
        None,
        ge=0.0,
        description="the most the teacher_cache directory may hold, in GB (1e9 bytes); when full, no more "
        "entries are written (logged, and counted in metrics.json)",
    )
    teacher_cache_dtype: Literal["float32", "float16"] = Field(
        "float32", description="storage of cached features; float16 halves the disk (read back as float32)"
    )

    @field_validator("points")
    @classmethod
    def _unique(cls, points: list[PointConfig]) -> list[PointConfig]:
        dupes = repeated(p.name for p in points)
        if dupes:
            raise ValueError(f"point names must be unique; repeated: {dupes}")
        return points
