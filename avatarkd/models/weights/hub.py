"""``torchvision:<EnumClass>.<NAME>`` weights, read from the hub cache under ``TORCH_HOME``; never downloaded.

The name is resolved with torchvision's weights API (an unknown name suggests the closest); when
the file is not in the cache, one line names the file and the folder to place it in.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor

from ...errors import CheckpointError, ConfigError
from ...loading import load_torch_file
from ...naming import did_you_mean
from .files import state_dict_of

TORCHVISION_PREFIX = "torchvision:"


def _all_enum_names() -> list[str]:
    import torchvision
    from torchvision.models import get_model_weights

    names = []
    for model in torchvision.models.list_models():
        enum = get_model_weights(model)
        names += [f"{enum.__name__}.{member}" for member in enum.__members__]
    return names


def torchvision_weights(name: str) -> Any:
    """The torchvision ``WeightsEnum`` member named ``EnumClass.NAME``; an unknown name suggests the closest."""
    from torchvision.models import get_weight

    try:
        if "." not in name:
            raise ValueError(name)
        return get_weight(name)
    except (ValueError, KeyError, AttributeError):
        hint = did_you_mean(name, _all_enum_names()) or (
            "; write torchvision:<EnumClass>.<NAME>, e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1"
        )
        raise ConfigError(f"{TORCHVISION_PREFIX}{name}: unknown torchvision weights{hint}") from None


def torchvision_cache_file(weights: Any) -> Path:
    """Where torchvision's ``load_state_dict_from_url`` looks for ``weights`` (under ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def read_torchvision_weights(name: str) -> dict[str, Tensor]:
    """The state_dict of ``torchvision:<name>`` from the hub cache; never downloads."""
    weights = torchvision_weights(name)
    cached = torchvision_cache_file(weights)
    if not cached.is_file():
        raise CheckpointError(
            f"{TORCHVISION_PREFIX}{name}: weights file {cached.name} is not in {cached.parent}; "
            f"place it there (it is {weights.url}; avatarkd never downloads) or set TORCH_HOME"
        )
    # read here rather than by torchvision's get_state_dict, which unpickles (weights_only=False)
    return state_dict_of(load_torch_file(cached), f"{TORCHVISION_PREFIX}{name}")


__all__ = ["TORCHVISION_PREFIX", "read_torchvision_weights", "torchvision_cache_file", "torchvision_weights"]
