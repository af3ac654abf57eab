"""Training engine: config, loop, checkpoints, logging, plots, export, distribution."""

from .config import TrainConfig, load_config

__all__ = ["TrainConfig", "load_config"]
