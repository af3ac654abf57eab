"""Model builders from torchvision parts, sized by arguments (never hard-coded channel counts).

No weights are downloaded: every builder passes ``weights=None``; a trained model is loaded from a
local checkpoint by the engine.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn
from torchvision import models
from torchvision.models import detection, segmentation
from torchvision.models._utils import IntermediateLayerGetter
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.backbone_utils import BackboneWithFPN
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError

Backbone = Literal["resnet18", "resnet34", "resnet50", "resnet101", "mobilenet_v3_small", "mobilenet_v3_large"]
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
MOBILENETS = ("mobilenet_v3_small", "mobilenet_v3_large")


def _resnet(name: str, output_stride: int = 32) -> models.ResNet:
    """A ResNet whose last stages keep resolution (``output_stride`` 8 or 16) for dense tasks.

    Bottleneck ResNets use dilation as torchvision does; BasicBlock ones (18/34) cannot dilate, so
    their stage strides are simply set to 1, which suits the small images this library trains on.
    """
    if name not in RESNETS:
        raise ConfigError(f"unknown ResNet {name!r}; choose one of {RESNETS}")
    keep = {32: 0, 16: 1, 8: 2}.get(output_stride)
    if keep is None:
        raise ConfigError(f"output_stride must be 8, 16 or 32, got {output_stride}")
    if name in ("resnet50", "resnet101"):
        dilate = [False, keep >= 2, keep >= 1]
        return getattr(models, name)(weights=None, replace_stride_with_dilation=dilate)
    net = getattr(models, name)(weights=None)
    for layer in [net.layer4, net.layer3][:keep]:
        block = layer[0]
        block.conv1.stride = (1, 1)
        if block.downsample is not None:
            block.downsample[0].stride = (1, 1)
    return net


def _resnet_channels(net: models.ResNet) -> list[int]:
    return [layer[-1].conv3.out_channels if hasattr(layer[-1], "conv3") else layer[-1].conv2.out_channels
            for layer in (net.layer1, net.layer2, net.layer3, net.layer4)]


# ------------------------------------------------------------------ classification
def build_classifier(backbone: Backbone, num_classes: int) -> nn.Module:
    """A torchvision classifier; distillation points: ``fc``/``classifier`` (logits), ``layer4``/``features``."""
    if backbone in RESNETS:
        return getattr(models, backbone)(weights=None, num_classes=num_classes)
    if backbone in MOBILENETS:
        return getattr(models, backbone)(weights=None, num_classes=num_classes)
    raise ConfigError(f"unknown classifier backbone {backbone!r}; choose one of {RESNETS + MOBILENETS}")


# ------------------------------------------------------------------ segmentation
SegHead = Literal["fcn", "deeplabv3", "lraspp"]


def build_segmenter(head: SegHead, backbone: Backbone, num_classes: int, output_stride: int = 8) -> nn.Module:
    """torchvision FCN / DeepLabV3 / LR-ASPP on any ResNet or MobileNetV3 backbone.

    The backbone is exposed as ``backbone`` (an ``IntermediateLayerGetter`` whose ``"out"`` item is
    the last stage), so distillation points ``backbone`` with key ``out`` work for every combination.
    """
    if head == "lraspp":
        if backbone not in MOBILENETS:
            raise ConfigError("lraspp needs a mobilenet_v3_small/large backbone")
        features = getattr(models, backbone)(weights=None, dilated=True).features
        stages = [0] + [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
        low, high = stages[-4], stages[-1]
        body = IntermediateLayerGetter(features, return_layers={str(low): "low", str(high): "out"})
        model = segmentation.LRASPP(body, features[low].out_channels, features[high].out_channels, num_classes)
        # LRASPP reads result["high"]; map our "out" name onto it without copying the backbone.
        model.backbone = _Rename(body, {"out": "high"})
        return model
    if backbone in RESNETS:
        net = _resnet(backbone, output_stride)
        channels = _resnet_channels(net)[-1]
        body = IntermediateLayerGetter(net, return_layers={"layer4": "out"})
    elif backbone in MOBILENETS:
        features = getattr(models, backbone)(weights=None, dilated=True).features
        channels = features[-1].out_channels
        body = IntermediateLayerGetter(features, return_layers={str(len(features) - 1): "out"})
    else:
        raise ConfigError(f"unknown segmentation backbone {backbone!r}")
    if head == "fcn":
        return segmentation.FCN(body, segmentation.fcn.FCNHead(channels, num_classes))
    if head == "deeplabv3":
        return segmentation.DeepLabV3(body, segmentation.deeplabv3.DeepLabHead(channels, num_classes))
    raise ConfigError(f"unknown segmentation head {head!r}; choose fcn, deeplabv3 or lraspp")


class _Rename(nn.Module):
    """Wraps a feature extractor and renames output keys (keeps ``out`` for distillation)."""

    def __init__(self, body: nn.Module, rename: dict[str, str]) -> None:
        super().__init__()
        self.body = body
        self.rename = rename

    def forward(self, x):  # type: ignore[override]
        out = self.body(x)
        return OrderedDict((self.rename.get(k, k), v) for k, v in out.items())


# ------------------------------------------------------------------ detection
Detector = Literal["retinanet", "fcos", "fasterrcnn"]


def build_detector(
    arch: Detector,
    backbone: Backbone,
    num_classes: int,
    fpn_channels: int = 256,
    image_size: int = 800,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
) -> nn.Module:
    """RetinaNet / FCOS / Faster R-CNN with an FPN of ``fpn_channels`` on a ResNet or MobileNetV3.

    ``num_classes`` excludes the background; labels are 1..num_classes and torchvision's heads get
    num_classes + 1 outputs (index 0 never fires for RetinaNet/FCOS, it is the background for R-CNN). Images are resized to
    ``image_size`` by the model's transform. The neck is ``backbone.fpn`` with five levels for
    RetinaNet/FCOS (P3-P7) and four plus a pool level for Faster R-CNN.
    """
    if arch == "fcos" and fpn_channels % 32:
        raise ConfigError(f"fcos needs fpn_channels divisible by 32 (its head uses GroupNorm(32)), got {fpn_channels}")
    two_stage = arch == "fasterrcnn"
    extra = LastLevelMaxPool() if two_stage else LastLevelP6P7(fpn_channels, fpn_channels)
    if backbone in RESNETS:
        net = _resnet(backbone)
        ch = _resnet_channels(net)
        names = ["layer1", "layer2", "layer3", "layer4"] if two_stage else ["layer2", "layer3", "layer4"]
        in_channels = ch[-len(names):]
        body_layers = {n: str(i) for i, n in enumerate(names)}
        fpn_backbone = BackboneWithFPN(net, body_layers, in_channels, fpn_channels, extra_blocks=extra)
    elif backbone in MOBILENETS:
        features = getattr(models, backbone)(weights=None).features
        stages = [i for i, b in enumerate(features) if getattr(b, "_is_cn", False)] + [len(features) - 1]
        picked = stages[-3:]
        in_channels = [features[i].out_channels for i in picked]
        fpn_backbone = BackboneWithFPN(features, {str(i): str(j) for j, i in enumerate(picked)}, in_channels,
                                       fpn_channels, extra_blocks=extra)
    else:
        raise ConfigError(f"unknown detection backbone {backbone!r}")
    levels = len(in_channels) + (1 if two_stage else 2)
    anchors = tuple((s,) for s in anchor_sizes[:levels])
    size = dict(min_size=image_size, max_size=image_size)
    if arch == "retinanet":
        scales = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for (s,) in anchors)
        gen = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(scales))
        return detection.RetinaNet(fpn_backbone, num_classes + 1, anchor_generator=gen, **size)
    if arch == "fcos":
        gen = AnchorGenerator(anchors, ((1.0,),) * len(anchors))
        return detection.FCOS(fpn_backbone, num_classes + 1, anchor_generator=gen, **size)
    if arch == "fasterrcnn":
        gen = AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * len(anchors))
        pool = MultiScaleRoIAlign([str(i) for i in range(len(in_channels))], output_size=7, sampling_ratio=2)
        return detection.FasterRCNN(fpn_backbone, num_classes + 1, rpn_anchor_generator=gen, box_roi_pool=pool, **size)
    raise ConfigError(f"unknown detector {arch!r}; choose retinanet, fcos or fasterrcnn")
