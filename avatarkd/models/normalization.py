"""Input normalisation as part of a model, without touching its weights or module paths.

Why per model and not in the data pipeline: a teacher and a student may expect different inputs
(an ImageNet-pretrained teacher, a student trained from scratch), and the exported student must
say what it expects so that inference outside avatarkd is reproducible. The data pipeline yields
float images in [0, 1]; each model normalises its own input:

- torchvision detectors already normalise inside ``model.transform``; its ``image_mean`` and
  ``image_std`` are set from the config (they are plain attributes, not state);
- any other model gets a forward pre-hook on itself, so ``state_dict`` keys and distillation
  paths stay exactly those of the user's module.

Code that calls a part of the model directly (the teacher's backbone alone) applies the same
normalisation with ``normalize_images``.
"""

from __future__ import annotations

import logging
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError

if TYPE_CHECKING:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

log = logging.getLogger(__name__)

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Normalization:
    """``(x - mean) / std`` per channel, on images in [0, 1]."""

    mean: tuple[float, ...]
    std: tuple[float, ...]

    def as_dict(self) -> dict[str, list[float]]:
        return {"mean": list(self.mean), "std": list(self.std)}

    def describe(self) -> str:
        return f"mean {list(self.mean)}, std {list(self.std)}"

    def __call__(self, images: Any) -> Any:
        if isinstance(images, Tensor):
            return self._one(images)
        if isinstance(images, (list, tuple)) and all(isinstance(i, Tensor) for i in images):
            return type(images)(self._one(i) for i in images)
        return images

    def _one(self, x: Tensor) -> Tensor:
        if x.dim() < 3 or not x.is_floating_point():
            return x
        if len(self.mean) not in (1, x.shape[-3]):
            raise ConfigError(
                f"model.normalize has {len(self.mean)} values per channel but the images have {x.shape[-3]} channels"
            )
        shape = (-1, 1, 1)
        mean = torch.as_tensor(self.mean, dtype=x.dtype, device=x.device).view(shape)
        std = torch.as_tensor(self.std, dtype=x.dtype, device=x.device).view(shape)
        return (x - mean) / std


IMAGENET = Normalization(IMAGENET_MEAN, IMAGENET_STD)


def normalization_from(value: Any) -> Normalization | None:
    """``"imagenet"`` / ``"none"`` / ``{mean, std}`` (a config value or a ``student.json`` entry) -> Normalization."""
    if value is None or value == "none":
        return None
    if value == "imagenet":
        return IMAGENET
    mean = getattr(value, "mean", None) if not isinstance(value, dict) else value.get("mean")
    std = getattr(value, "std", None) if not isinstance(value, dict) else value.get("std")
    if mean is None or std is None:
        raise ConfigError(f"model.normalize: expected imagenet, none or {{mean: [...], std: [...]}}, got {value!r}")
    return Normalization(tuple(float(m) for m in mean), tuple(float(s) for s in std))


def resolve_normalization(mcfg: Any, recorded: Any = "unknown") -> Normalization | None:
    """The normalisation a model config asks for.

    ``model.normalize`` when given; else what an avatarkd export of the loaded weights recorded
    (``recorded``, from its ``student.json``), so a teacher keeps the inputs it was trained on;
    else ImageNet statistics when pretrained weights are used (a ``torchvision:`` enum, or
    ``backbone_weights``); else none.
    """
    if mcfg.normalize is not None:
        return normalization_from(mcfg.normalize)
    if recorded != "unknown":
        return normalization_from(recorded)
    pretrained = bool(mcfg.backbone_weights) or str(mcfg.weights or "").startswith("torchvision:")
    return IMAGENET if pretrained else None


_ATTACHED: weakref.WeakKeyDictionary[nn.Module, tuple[Normalization | None, Any]] = weakref.WeakKeyDictionary()


def _rcnn_transform(model: nn.Module) -> GeneralizedRCNNTransform | None:
    from torchvision.models.detection.transform import GeneralizedRCNNTransform

    transform = getattr(model, "transform", None)
    return transform if isinstance(transform, GeneralizedRCNNTransform) else None


def attach_normalization(model: nn.Module, norm: Normalization | None) -> nn.Module:
    """Make ``model`` normalise its own input (see the module docstring); replaces an earlier attachment."""
    previous = _ATTACHED.pop(model, None)
    if previous is not None and previous[1] is not None:
        previous[1].remove()
    transform = _rcnn_transform(model)
    handle = None
    if transform is not None:
        # torchvision detectors normalise inside their transform; "none" is mean 0, std 1
        transform.image_mean = list(norm.mean) if norm else [0.0]
        transform.image_std = list(norm.std) if norm else [1.0]
    elif norm is not None:

        def pre_hook(_module: nn.Module, args: tuple) -> tuple:
            return (norm(args[0]), *args[1:]) if args else args

        handle = model.register_forward_pre_hook(pre_hook)
    _ATTACHED[model] = (norm, handle)
    return model


def configure_normalization(model: nn.Module, mcfg: Any, recorded: Any, role: str) -> Normalization | None:
    """Attach what ``mcfg`` asks for (``resolve_normalization``) to ``model`` and log it; returns it."""
    norm = resolve_normalization(mcfg, recorded)
    attach_normalization(model, norm)
    log.info("%s input normalisation: %s", role, norm.describe() if norm else "none")
    return norm


def normalization_key(model: nn.Module) -> tuple[Any, ...]:
    """What the attached normalisation contributes to a teacher-feature cache's key (it changes the features)."""
    norm = input_normalization(model)
    return ("normalize", norm.mean, norm.std) if norm is not None else ("normalize", "none")


def input_normalization(model: nn.Module) -> Normalization | None:
    """The normalisation attached to ``model`` (None: none, or never attached)."""
    found = _ATTACHED.get(model)
    return found[0] if found else None


def normalize_images(model: nn.Module, images: Any) -> Any:
    """What ``model``'s pre-hook would do to ``images``, for code that calls a part of the model directly.

    Detectors with a transform are left alone: their transform normalises.
    """
    found = _ATTACHED.get(model)
    if not found or found[1] is None:
        return images
    return found[0](images)  # type: ignore[misc]


__all__ = [
    "IMAGENET",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "Normalization",
    "attach_normalization",
    "configure_normalization",
    "input_normalization",
    "normalization_from",
    "normalization_key",
    "normalize_images",
    "resolve_normalization",
]
