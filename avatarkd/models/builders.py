"""Model builders from torchvision parts on any torchvision or timm backbone (never hard-coded channel counts).

No weights are downloaded: every builder starts from random weights; pretrained or trained
weights are loaded afterwards by ``avatarkd.models.weights`` from local files or the hub cache.
Each builder records how to rebuild what it made (``recipe_of``), for the exported ``student.json``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Literal

from torch import nn
from torchvision.models import detection, segmentation
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.ops import MultiScaleRoIAlign
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from ..errors import ConfigError
from .backbones import (
    extractor,
    last_level,
    low_high_levels,
    pyramid_levels,
    timm_create,
    timm_name,
    torchvision_classifier,
)
from .extractors import FeaturePyramid
from .recipes import record_recipe


# ------------------------------------------------------------------ classification
def build_classifier(backbone: str, num_classes: int) -> nn.Module:
    """Any torchvision classifier (``resnet18``, ``mobilenet_v2``, ``convnext_tiny``...) or ``timm:<name>``.

    The model is the library's own class, unchanged: distillation points are its module names
    (``fc``/``classifier`` logits, ``layer4``, ``features``, ``features.3``).
    """
    name = timm_name(backbone)
    if name is not None:
        model = timm_create(name, num_classes=num_classes)
        record_recipe(model, "timm:create_model", {"model_name": name, "num_classes": num_classes, "pretrained": False})
        return model
    model = torchvision_classifier(backbone, num_classes=num_classes)
    record_recipe(model, f"torchvision.models:{backbone}", {"num_classes": num_classes, "weights": None})
    return model


# ------------------------------------------------------------------ segmentation
SegHead = Literal["fcn", "deeplabv3", "lraspp"]
SEG_HEADS = ("fcn", "deeplabv3", "lraspp")


def build_segmenter(
    head: SegHead | str | None, backbone: str, num_classes: int, output_stride: int | None = None
) -> nn.Module:
    """torchvision FCN / DeepLabV3 / LR-ASPP on any torchvision or timm backbone.

    ``output_stride`` (8, 16 or 32; default 16 for LR-ASPP, whose design reads stride-8 and
    stride-16 features, else 8) is reached by dilating the later stages. The feature extractor is
    ``backbone`` for FCN/DeepLabV3 (its ``"out"`` item is the deepest level) and ``backbone.body``
    for LR-ASPP (items ``"low"`` and ``"out"``), so distillation points ``backbone``/``backbone.body``
    with key ``out`` work for every backbone, and stages keep their names (``backbone.layer4``).
    """
    if head not in SEG_HEADS:
        raise ConfigError(f"model.arch: unknown segmentation head {head!r}; choose fcn, deeplabv3 or lraspp")
    stride = output_stride or (16 if head == "lraspp" else 8)
    record_args = {"head": head, "backbone": backbone, "num_classes": num_classes, "output_stride": stride}
    if head == "lraspp":
        ex = extractor(backbone, low_high_levels, stride)
        model: nn.Module = segmentation.LRASPP(ex.module, ex.channels["low"], ex.channels["out"], num_classes)
        # LRASPP reads result["high"]; map our "out" name onto it without copying the backbone.
        model.backbone = _Rename(ex.module, {"out": "high"})
    else:
        ex = extractor(backbone, last_level, stride)
        channels = ex.channels["out"]
        if head == "fcn":
            model = segmentation.FCN(ex.module, segmentation.fcn.FCNHead(channels, num_classes))
        else:
            model = segmentation.DeepLabV3(ex.module, segmentation.deeplabv3.DeepLabHead(channels, num_classes))
    record_recipe(model, "avatarkd.models:build_segmenter", record_args)
    return model


class _Rename(nn.Module):
    """Wraps a feature extractor and renames output keys (keeps ``out`` for distillation)."""

    def __init__(self, body: nn.Module, rename: dict[str, str]) -> None:
        super().__init__()
        self.body = body
        self.rename = rename

    def forward(self, x):  # unannotated: TorchScript infers Dict[str, Tensor]; OrderedDict[...] does not compile
        out = self.body(x)
        return OrderedDict((self.rename.get(k, k), v) for k, v in out.items())


# ------------------------------------------------------------------ detection
Detector = Literal["retinanet", "fcos", "fasterrcnn"]
DETECTORS = ("retinanet", "fcos", "fasterrcnn")


def build_detector(
    arch: Detector | str | None,
    backbone: str,
    num_classes: int,
    fpn_channels: int = 256,
    image_size: int = 800,
    anchor_sizes: tuple[int, ...] = (32, 64, 128, 256, 512),
) -> nn.Module:
    """RetinaNet / FCOS / Faster R-CNN with an FPN of ``fpn_channels`` on any torchvision or timm backbone.

    ``num_classes`` excludes the background; labels are 1..num_classes and torchvision's heads get
    num_classes + 1 outputs (index 0 never fires for RetinaNet/FCOS, it is the background for R-CNN).
    Images are resized to ``image_size`` by the model's transform. The neck is ``backbone.fpn`` on
    the backbone's deepest three levels (strides 8-32) plus P6/P7 for RetinaNet/FCOS, and on four
    levels plus a pool level for Faster R-CNN; the feature extractor is ``backbone.body``.
    """
    if arch not in DETECTORS:
        raise ConfigError(f"model.arch: unknown detector {arch!r}; choose retinanet, fcos or fasterrcnn")
    if arch == "fcos" and fpn_channels % 32:
        raise ConfigError(f"fcos needs fpn_channels divisible by 32 (its head uses GroupNorm(32)), got {fpn_channels}")
    two_stage = arch == "fasterrcnn"
    extra = LastLevelMaxPool() if two_stage else LastLevelP6P7(fpn_channels, fpn_channels)
    count = 4 if two_stage else 3
    ex = extractor(backbone, pyramid_levels(count))
    in_channels = [ex.channels[str(j)] for j in range(count)]
    fpn_backbone = FeaturePyramid(ex.module, in_channels, fpn_channels, extra)
    levels = count + (1 if two_stage else 2)
    anchors = tuple((s,) for s in anchor_sizes[:levels])
    size = dict(min_size=image_size, max_size=image_size)
    if arch == "retinanet":
        scales = tuple((s, int(s * 2 ** (1 / 3)), int(s * 2 ** (2 / 3))) for (s,) in anchors)
        gen = AnchorGenerator(scales, ((0.5, 1.0, 2.0),) * len(scales))
        model: nn.Module = detection.RetinaNet(fpn_backbone, num_classes + 1, anchor_generator=gen, **size)
    elif arch == "fcos":
        gen = AnchorGenerator(anchors, ((1.0,),) * len(anchors))
        model = detection.FCOS(fpn_backbone, num_classes + 1, anchor_generator=gen, **size)
    else:
        gen = AnchorGenerator(anchors, ((0.5, 1.0, 2.0),) * len(anchors))
        pool = MultiScaleRoIAlign([str(i) for i in range(count)], output_size=7, sampling_ratio=2)
        model = detection.FasterRCNN(fpn_backbone, num_classes + 1, rpn_anchor_generator=gen, box_roi_pool=pool, **size)
    record_recipe(
        model,
        "avatarkd.models:build_detector",
        {
            "arch": arch,
            "backbone": backbone,
            "num_classes": num_classes,
            "fpn_channels": fpn_channels,
            "image_size": image_size,
            "anchor_sizes": list(anchor_sizes),
        },
    )
    return model


__all__ = ["DETECTORS", "FeaturePyramid", "SEG_HEADS", "build_classifier", "build_detector", "build_segmenter"]
