"""Configuration schema and YAML loading: the bottom layer, imported by everything above it."""

from .base import Strict
from .distill import (
    PERTURBATIONS,
    UNCERTAINTY_MODES,
    AKDConfig,
    DistillerConfig,
    Perturbation,
    PointConfig,
    UncertaintyMode,
)
from .train import (
    DATA_FORMATS,
    DataConfig,
    DataFormat,
    EvalConfig,
    ModelConfig,
    NormalizeConfig,
    OptimConfig,
    Split,
    TrainConfig,
    TrainLoopConfig,
    load_config,
)
from .yamlio import apply_overrides, format_validation_error, load_yaml, parse_yaml, validate

__all__ = [
    "AKDConfig",
    "DATA_FORMATS",
    "DataConfig",
    "DataFormat",
    "DistillerConfig",
    "EvalConfig",
    "ModelConfig",
    "NormalizeConfig",
    "OptimConfig",
    "PERTURBATIONS",
    "Perturbation",
    "Split",
    "PointConfig",
    "Strict",
    "TrainConfig",
    "TrainLoopConfig",
    "UNCERTAINTY_MODES",
    "UncertaintyMode",
    "apply_overrides",
    "format_validation_error",
    "load_config",
    "load_yaml",
    "parse_yaml",
    "validate",
]
