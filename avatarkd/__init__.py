"""avatarkd: Avatar Knowledge Distillation for any PyTorch model."""

from . import losses
from .akd import AvatarLoss
from .avatars import Avatars
from .distiller import DistillerConfig, DistillPoint, Distiller, build_points
from .errors import AvatarKDError, CheckpointError, ConfigError, DataError, DistillationError
from .uncertainty import Uncertainty

__version__ = "0.1.0"
__all__ = [
    "losses", "AvatarLoss", "Avatars", "Distiller", "DistillPoint", "DistillerConfig", "build_points",
    "Uncertainty", "AvatarKDError", "CheckpointError", "ConfigError", "DataError", "DistillationError",
]
