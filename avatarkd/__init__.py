"""avatarkd: Avatar Knowledge Distillation for any PyTorch model."""

from . import losses
from .akd import AvatarLoss
from .avatars import Avatars
from .config import DistillerConfig
from .distiller import Distiller, DistillPoint, build_points
from .errors import AvatarKDError, CheckpointError, ConfigError, DataError, DistillationError
from .registry import LOSSES, register_loss, register_perturbation, register_uncertainty
from .uncertainty import Uncertainty

__version__ = "0.1.0"
__all__ = [
    "losses",
    "AvatarLoss",
    "Avatars",
    "Distiller",
    "DistillPoint",
    "DistillerConfig",
    "build_points",
    "LOSSES",
    "register_loss",
    "register_perturbation",
    "register_uncertainty",
    "Uncertainty",
    "AvatarKDError",
    "CheckpointError",
    "ConfigError",
    "DataError",
    "DistillationError",
]
