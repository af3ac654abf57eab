"""Model-agnostic distillation: recorders, connectors, the Distiller, and points built from config."""

from .build import build_points, missing_context, wrap_loss
from .connectors import Connector
from .distiller import Distiller, DistillPoint
from .recorder import Recorder
from .teacher_cache import TeacherCache

__all__ = [
    "build_points",
    "missing_context",
    "wrap_loss",
    "Connector",
    "DistillPoint",
    "Distiller",
    "Recorder",
    "TeacherCache",
]
