"""Model-agnostic distillation: recorders, connectors, the Distiller and its config."""

from .config import AKDConfig, DistillerConfig, PointConfig, build_points
from .connectors import Connector
from .distiller import DistillPoint, Distiller
from .recorder import Recorder
from .teacher_cache import TeacherCache

__all__ = ["AKDConfig", "DistillerConfig", "PointConfig", "build_points", "Connector", "DistillPoint", "Distiller", "Recorder", "TeacherCache"]
