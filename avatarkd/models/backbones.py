"""Feature extractors for the dense heads, from any torchvision classifier or any timm model.

Why generic: the heads (FCN, DeepLabV3, LR-ASPP, FPN detectors) only need "the feature maps at
a few strides, with their channel counts". Instead of one if/elif branch per family, the
classifier is probed once on a small dummy image: its stages are run in order, and the stride
and channel count of every stage output are read off. The last stage at each stride is a
level; heads pick their levels by stride. Output strides below 32 (segmentation) are made by
dilation, derived from the same probe: a convolution whose input sits at stride ``s`` larger
than the target keeps the resolution and dilates by ``s / output_stride``, which is what
torchvision's ``replace_stride_with_dilation`` does for ResNets, for every family at once.

Stage modules keep the names they have in the classifier (``layer4``, ``features.3``,
``trunk_output.block2``), so a classification checkpoint's keys line up with the extractor's and
distillation points name stages as in the classifier.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import ConfigError
from ..naming import did_you_mean
from .extractors import Stages, TimmFeatures

TIMM_PREFIX = "timm:"
TIMM_INSTALL = "pip install 'avatarkd[timm]' (or pip install timm)"
# children that end the convolutional trunk of a torchvision classifier (pooling and the head)
_HEAD_TYPES = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Linear, nn.Dropout)
_HEAD_NAMES = ("avgpool", "fc", "classifier", "head", "heads")
_PROBE_SIZE = 64


@dataclass(frozen=True)
class Stage:
    """One stage of a trunk: its module path (in the classifier's names), output stride, channels."""

    path: str
    stride: int
    channels: int


# a head's choice among the levels (last stage per stride, strides ascending): {level index: name}
Picker = Callable[[list[Stage]], dict[int, str]]


def torchvision_names() -> list[str]:
    """Every torchvision classification model name (``torchvision.models.list_models``)."""
    import torchvision

    return list(torchvision.models.list_models(module=torchvision.models))


def torchvision_classifier(name: str, **kwargs) -> nn.Module:
    """``torchvision.models.get_model(name, weights=None, **kwargs)``; an unknown name suggests the closest."""
    import torchvision

    names = torchvision_names()
    if name not in names:
        raise ConfigError(
            f"model.backbone: unknown torchvision classification model {name!r}"
            f"{did_you_mean(name, names)}; or use 'timm:<name>' for a timm model"
        )
    return torchvision.models.get_model(name, weights=None, **kwargs)


def import_timm():
    """The timm package, or a one-line error that says how to install it."""
    try:
        import timm
    except ImportError:
        raise ConfigError(
            f"model.backbone: a 'timm:' backbone needs the timm package, which is not installed; {TIMM_INSTALL}"
        ) from None
    return timm


def timm_name(backbone: str) -> str | None:
    """``"timm:resnet10t"`` -> ``"resnet10t"``; None for a torchvision name."""
    return backbone[len(TIMM_PREFIX) :] if backbone.startswith(TIMM_PREFIX) else None


def timm_create(name: str, **kwargs) -> nn.Module:
    """``timm.create_model(name, pretrained=False, **kwargs)`` with one-line errors (nothing is downloaded)."""
    timm = import_timm()
    if not timm.is_model(name):
        raise ConfigError(f"model.backbone: unknown timm model {name!r}{did_you_mean(name, timm.list_models())}")
    try:
        return timm.create_model(name, pretrained=False, **kwargs)
    except (TypeError, ValueError, AssertionError, RuntimeError) as err:
        detail = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise ConfigError(f"model.backbone: timm cannot build {name!r} with {kwargs}: {detail}") from None


# ------------------------------------------------------------------ torchvision trunks
def trunk_root(classifier: nn.Module) -> nn.Module:
    """The module whose children are the stages: ``features`` where a classifier has it, else itself."""
    features = getattr(classifier, "features", None)
    return features if isinstance(features, nn.Sequential) else classifier


def _stride(size: int, x: Tensor, where: str) -> int:
    if x.dim() != 4 or x.shape[-1] != x.shape[-2]:
        raise ConfigError(
            f"model.backbone: stage {where!r} returns shape {tuple(x.shape)}, not (N, C, H, W) "
            "feature maps; wrap the network in your own module and use model.factory"
        )
    return max(1, round(size / x.shape[-1]))


@torch.no_grad()
def probe_stages(root: nn.Module, name: str) -> list[Stage]:
    """Run ``root``'s children in order on a dummy image and record each stage's stride and channels.

    A child that is a ``Sequential`` holding two or more downsampling steps (RegNet's
    ``trunk_output``) is expanded into its children, so that every resolution has a level.
    Pooling and head children end the trunk.
    """
    was_training = root.training
    root.eval()
    try:
        x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
        stages: list[Stage] = []
        for child_name, child in root.named_children():
            if isinstance(child, _HEAD_TYPES) or child_name in _HEAD_NAMES:
                break
            if isinstance(child, nn.Sequential) and len(child) > 1:
                inner, y = [], x
                for sub_name, sub in child.named_children():
                    y = sub(y)
                    inner.append(
                        Stage(
                            f"{child_name}.{sub_name}",
                            _stride(_PROBE_SIZE, y, f"{child_name}.{sub_name}"),
                            int(y.shape[1]),
                        )
                    )
                previous = stages[-1].stride if stages else 1
                before = [previous] + [s.stride for s in inner[:-1]]
                changes = sum(1 for b, after in zip(before, inner, strict=True) if after.stride != b)
                if changes >= 2:
                    stages += inner
                    x = y
                    continue
            x = child(x)
            stages.append(Stage(child_name, _stride(_PROBE_SIZE, x, child_name), int(x.shape[1])))
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(
            f"model.backbone: {name!r} is not a plain sequence of stages avatarkd can split "
            f"({type(err).__name__}); wrap it in your own module and use model.factory"
        ) from None
    finally:
        root.train(was_training)
    if not stages:
        raise ConfigError(f"model.backbone: {name!r} has no convolutional stages avatarkd can find")
    return stages


def levels(stages: list[Stage]) -> list[Stage]:
    """The last stage at each stride, in order of stride (the usual C2..C5 of a backbone)."""
    last: dict[int, Stage] = {}
    for stage in stages:
        last[stage.stride] = stage
    return [last[s] for s in sorted(last)]


@torch.no_grad()
def dilate(root: nn.Module, stages: list[Stage], output_stride: int, name: str) -> None:
    """Keep ``output_stride`` resolution by removing strides and dilating the later convolutions, in place.

    A convolution whose input sits at stride ``s`` (measured by the probe) and whose output would
    exceed ``output_stride`` keeps the resolution; kernels after it dilate by ``s / output_stride``
    with "same" padding. Pooling that downsamples, or even-sized strided kernels (ConvNeXt's
    patchify downsampling), cannot be dilated: those backbones take ``output_stride: 32``.
    """
    if stages[-1].stride <= output_stride:
        return
    input_stride: dict[nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d, int] = {}

    def record(module: nn.Conv2d | nn.MaxPool2d | nn.AvgPool2d, args: tuple) -> None:
        input_stride.setdefault(module, max(1, round(_PROBE_SIZE / args[0].shape[-1])))

    handles = [
        m.register_forward_pre_hook(record)
        for m in root.modules()
        if isinstance(m, (nn.Conv2d, nn.MaxPool2d, nn.AvgPool2d))
    ]
    was_training = root.training
    root.eval()
    try:
        x = torch.zeros(1, 3, _PROBE_SIZE, _PROBE_SIZE)
        for stage in stages:
            x = root.get_submodule(stage.path)(x)
    finally:
        for h in handles:
            h.remove()
        root.train(was_training)
    cannot = f"model.output_stride: {name!r} cannot keep resolution {output_stride}"
    for module, s_in in input_stride.items():
        stride = _pair(module.stride, cannot)
        if s_in * stride <= output_stride:
            continue
        if isinstance(module, (nn.MaxPool2d, nn.AvgPool2d)):
            if stride > 1:
                raise ConfigError(f"{cannot} (it downsamples by pooling); use output_stride: 32")
            continue
        kernel = _pair(module.kernel_size, cannot)
        if stride > 1:
            module.stride = (max(1, output_stride // s_in),) * 2
        factor = max(1, s_in // output_stride)
        if kernel == 1:
            continue
        if kernel % 2 == 0 or module.padding_mode != "zeros":
            raise ConfigError(
                f"{cannot} (a {kernel}x{kernel} strided convolution cannot be dilated); use output_stride: 32"
            )
        if isinstance(module.padding, str):
            if module.padding != "same":
                raise ConfigError(f"{cannot} (padding {module.padding!r}); use output_stride: 32")
        else:
            module.padding = tuple(p * factor for p in module.padding)
        module.dilation = tuple(d * factor for d in module.dilation)


def _pair(value: int | tuple[int, ...], message: str) -> int:
    values = (value,) if isinstance(value, int) else tuple(value)
    if len(set(values)) != 1:
        raise ConfigError(f"{message} (non-square strides or kernels); use output_stride: 32")
    return int(values[0])


@dataclass
class Extractor:
    """A feature extractor returning named levels, and the channels and stride of each."""

    module: nn.Module
    channels: dict[str, int]
    strides: dict[str, int]


def extractor(backbone: str, pick: Picker, output_stride: int = 32) -> Extractor:
    """A feature extractor for ``backbone`` (torchvision name or ``timm:<name>``) returning ``pick``'s levels.

    ``pick(levels) -> {level index: name}`` chooses among the backbone's levels (last stage at
    each stride, strides ascending, before dilation).
    """
    name = timm_name(backbone)
    if name is not None:
        kwargs = {} if output_stride == 32 else {"output_stride": output_stride}
        body = timm_create(name, features_only=True, **kwargs)
        info: Any = body.feature_info  # timm FeatureInfo; nn.Module attributes type as Tensor | Module
        reductions, channels = list(info.reduction()), list(info.channels())
        found = [Stage(str(i), int(r), int(c)) for i, (r, c) in enumerate(zip(reductions, channels, strict=True))]
        names = pick(found)
        strides = {n: min(found[i].stride, output_stride) for i, n in names.items()}
        return Extractor(TimmFeatures(body, names), {n: found[i].channels for i, n in names.items()}, strides)
    classifier = torchvision_classifier(backbone)
    root = trunk_root(classifier)
    stages = probe_stages(root, backbone)
    found = levels(stages)
    names = pick(found)
    dilate(root, stages, output_stride, backbone)
    module = Stages(root, [s.path for s in stages], {found[i].path: n for i, n in names.items()})
    return Extractor(
        module,
        {n: found[i].channels for i, n in names.items()},
        {n: min(found[i].stride, output_stride) for i, n in names.items()},
    )


def last_level(found: list[Stage]) -> dict[int, str]:
    """Segmentation (FCN, DeepLabV3): the deepest level as ``out``."""
    return {len(found) - 1: "out"}


def low_high_levels(found: list[Stage]) -> dict[int, str]:
    """LR-ASPP: the level at stride 8 (or the nearest below it) as ``low``, the deepest as ``out``."""
    low = max((i for i, s in enumerate(found[:-1]) if s.stride <= 8), default=0)
    return {low: "low", len(found) - 1: "out"}


def pyramid_levels(count: int):
    """FPN detectors: the ``count`` deepest levels, named "0".."count-1" (torchvision's convention)."""

    def pick(found: list[Stage]) -> dict[int, str]:
        if len(found) < count:
            raise ConfigError(
                f"model.backbone: the FPN needs {count} levels of different stride, the backbone has {len(found)}"
            )
        first = len(found) - count
        return {first + j: str(j) for j in range(count)}

    return pick


__all__ = [
    "Extractor",
    "Stage",
    "Stages",
    "TIMM_INSTALL",
    "TIMM_PREFIX",
    "TimmFeatures",
    "dilate",
    "extractor",
    "import_timm",
    "last_level",
    "levels",
    "low_high_levels",
    "probe_stages",
    "pyramid_levels",
    "timm_create",
    "timm_name",
    "torchvision_classifier",
    "torchvision_names",
    "trunk_root",
]
