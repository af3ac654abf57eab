"""AKD inside MMRazor: ``AvatarLoss`` registered in ``mmrazor.registry.MODELS``.

``pip install 'avatarkd[mmrazor]'`` (mmrazor 1.0.0, mmengine, mmcv-lite). Importing this module
(``custom_imports = dict(imports=["avatarkd.integrations.mmrazor"])`` in an MMRazor config) makes
``type="AvatarLoss"`` available wherever MMRazor builds a loss, e.g. in a ``ConfigurableDistiller``'s
``distill_losses``::

    distill_losses=dict(
        loss_cwd=dict(type="AvatarLoss", base=dict(type="ChannelWiseDivergence", tau=1, loss_weight=3),
                      num_avatars=4, p=0.1, uncertainty="relative")),
    loss_forward_mappings=dict(
        loss_cwd=dict(preds_S=dict(from_student=True, recorder="logits"),
                      preds_T=dict(from_student=False, recorder="logits")))

``base`` is any loss registered in MMRazor's ``MODELS`` (a config dict), or the name of an
avatarkd loss (``"cwd"``, ``"kd"``, ...) whose hyperparameters are the remaining keyword
arguments. Why a wrapper with the base's own ``forward`` signature: MMRazor maps recorded features
to a loss's arguments by name (``preds_S``/``preds_T`` for most, other names for some), and checks
the mapping against ``forward``'s signature; the wrapper presents the base's signature, so an
existing MMRazor config changes only its ``type``.

With ``num_avatars=1, p=0, uncertainty="none"`` the value is the base loss's exactly.

Note: on torch 2.x, ``import mmrazor.models`` (which registers MMRazor's own losses) fails on
MMRazor's quantization imports (its issues #615/#632). This module imports only
``mmrazor.registry`` and never patches MMRazor; an environment that cannot import
``mmrazor.models`` must be fixed there (avatarkd's tests stub the unused quantization subpackage).
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from torch import Tensor, nn

from ..akd import AvatarLoss as _AvatarLoss
from ..errors import ConfigError
from ..naming import did_you_mean
from ..registry import LOSSES

try:
    from mmrazor.registry import MODELS
except ImportError as err:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "avatarkd.integrations.mmrazor needs MMRazor: pip install 'avatarkd[mmrazor]' "
        "(mmrazor==1.0.0 mmengine mmcv-lite)"
    ) from err

_POSITIONAL = (inspect.Parameter.POSITIONAL_ONLY, inspect.Parameter.POSITIONAL_OR_KEYWORD)


class _Forward:
    """``forward`` with the base loss's signature (MMRazor checks its mappings against it).

    A small object rather than a closure so that ``copy.deepcopy`` and pickling follow the module.
    """

    def __init__(self, owner: AvatarLoss, signature: inspect.Signature) -> None:
        self.owner = owner
        self.__signature__ = signature

    def __call__(self, *args: Any, **kwargs: Any) -> Tensor:
        bound = self.__signature__.bind(*args, **kwargs)
        bound.apply_defaults()
        values = list(bound.arguments.items())
        (_, student), (_, teacher) = values[:2]
        return self.owner.loss_weight * self.owner.akd(student, teacher, **dict(values[2:]))


def _avatarkd_base(name: str, kwargs: dict[str, Any]) -> tuple[Any, inspect.Signature, dict[str, Any]]:
    """An avatarkd loss by name: (base, the forward signature MMRazor sees, its hyperparameters)."""
    if name not in LOSSES:
        raise ConfigError(f"AvatarLoss base {name!r}: not an avatarkd loss{did_you_mean(name, LOSSES)}")
    spec = LOSSES.get(name)
    channels = kwargs.pop("channels", None)
    if spec.channels:
        if channels is None:
            raise ConfigError(f"AvatarLoss base {name!r} is built from the teacher's channel count: give channels=")
        base, kwargs = spec.build(kwargs, channels), {}
    else:
        base = spec.build(kwargs)
    params = [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in ("preds_S", "preds_T")]
    params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in spec.context]
    return base, inspect.Signature(params), kwargs


class AvatarLoss(nn.Module):
    """An MMRazor distillation loss ``base`` as its Avatar version (``avatarkd.akd.AvatarLoss``).

    Args:
        base: an MMRazor loss config (``dict(type="ChannelWiseDivergence", tau=1)``), a built
            ``nn.Module`` loss, or an avatarkd loss name (``"cwd"``) with its hyperparameters in
            ``**base_kwargs``.
        num_avatars, perturbation, p, uncertainty, momentum: as in ``avatarkd.akd.AvatarLoss``.
        loss_weight: multiplies the result (MMRazor's convention; an MMRazor base has its own too).

    The avatars are drawn from the global random generator (seeded by MMEngine's ``randomness``).
    """

    def __init__(
        self,
        base: Mapping[str, Any] | nn.Module | str,
        num_avatars: int = 1,
        perturbation: str = "dropout",
        p: float = 0.1,
        uncertainty: str = "relative",
        momentum: float = 0.1,
        loss_weight: float = 1.0,
        **base_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(base, str):
            built, signature, base_kwargs = _avatarkd_base(base, dict(base_kwargs))
        else:
            if base_kwargs:
                raise ConfigError(
                    f"AvatarLoss got {sorted(base_kwargs)}: an MMRazor base takes its arguments in its own dict"
                )
            built = MODELS.build(dict(base)) if isinstance(base, Mapping) else base
            if not callable(built):
                raise ConfigError(f"AvatarLoss base: {type(built).__name__} is not a loss")
            signature = inspect.signature(built.forward if isinstance(built, nn.Module) else built)
            if sum(p.kind in _POSITIONAL for p in signature.parameters.values()) < 2:
                raise ConfigError(
                    f"AvatarLoss base {type(built).__name__}: its forward must take (student, teacher, ...)"
                )
        self.loss_weight = loss_weight
        self.akd = _AvatarLoss(
            built,
            num_avatars=num_avatars,
            perturbation=perturbation,
            p=p,
            uncertainty=uncertainty,
            momentum=momentum,
            base_kwargs=base_kwargs,
        )
        self.forward = _Forward(self, signature)


if "AvatarLoss" not in MODELS.module_dict:
    MODELS.register_module(name="AvatarLoss", module=AvatarLoss)

__all__ = ["AvatarLoss", "MODELS"]
