"""Distillation losses: pure functions (``functional``) and modules with learnable parts.

Each is registered (``avatarkd.registry.LOSSES``) beside its formula; ``register_loss`` adds
your own, usable from YAML by name.
"""

from ..registry import LOSSES, LossSpec, register_loss
from .functional import cwd, dkd, kd, kl_div_probs, l1, mse, pkd, smooth_l1
from .maskd import MasKD, ReceptiveTokens, dice_coefficient, maskd_loss, maskd_published_loss
from .mgd import MGD

__all__ = [
    "LOSSES",
    "LossSpec",
    "register_loss",
    "mse",
    "cwd",
    "kd",
    "dkd",
    "pkd",
    "l1",
    "smooth_l1",
    "kl_div_probs",
    "MGD",
    "MasKD",
    "maskd_loss",
    "maskd_published_loss",
    "ReceptiveTokens",
    "dice_coefficient",
]
