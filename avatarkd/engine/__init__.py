"""Training engine: the loop, checkpoints, logging, export and distribution, for parts built elsewhere."""

from .trainer import NonFiniteLossError, Stopped, Trainer

__all__ = ["NonFiniteLossError", "Stopped", "Trainer"]
