"""The evidence study's segmentation teacher, built through ``model.factory`` (found beside the YAML).

Why not a shipped architecture: on 2 CPU cores the dilated MobileNetV2 heads (LR-ASPP/DeepLabV3 at
output stride 8) stall near 0.43 test mIoU in the time we have, because the 64 px canvases leave
the pretrained filters almost nothing to look at and dilated depthwise convolutions are slow on
CPU. Upsampling the canvas to 128 px inside the backbone and decoding MobileNetV2's undilated stages
top-down (an FPN-style decoder) reached 0.58-0.59 test mIoU in 1,500 steps in our probe. It is also
a worked example of a user's own model: ``backbone.body`` is what ``model.backbone_weights`` loads
into, and distillation points name its modules by path like any other.
"""

from __future__ import annotations

import torch.nn.functional as F
import torchvision
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter


class ResizingBackbone(nn.Module):
    """Resizes the image to ``size`` then runs the stages; the resize lives here (not in the model's
    forward) so that a teacher run through its backbone alone sees the same input as the whole model."""

    def __init__(self, body: nn.Module, size: int) -> None:
        super().__init__()
        self.body = body
        self.size = size

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        if x.shape[-2:] != (self.size, self.size):
            x = F.interpolate(x, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.body(x)


class TopDownHead(nn.Module):
    """1x1 laterals of every tapped stage summed top-down, plus the pooled top stage as global context,
    then a 3x3 conv and the classifier at the finest tap."""

    def __init__(self, channels: list[int], num_classes: int, width: int) -> None:
        super().__init__()
        self.lateral = nn.ModuleList(
            nn.Sequential(nn.Conv2d(c, width, 1, bias=False), nn.BatchNorm2d(width)) for c in channels
        )
        self.context = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels[-1], width, 1, bias=False), nn.BatchNorm2d(width)
        )
        self.out = nn.Sequential(
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1, bias=False),
            nn.BatchNorm2d(width),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, feats: dict[str, Tensor]) -> Tensor:
        taps = list(feats.values())  # finest first
        x = self.lateral[-1](taps[-1]) + self.context(taps[-1])
        for lateral, f in zip(reversed(self.lateral[:-1]), reversed(taps[:-1]), strict=True):
            x = F.interpolate(x, size=f.shape[-2:], mode="bilinear", align_corners=False) + lateral(f)
        return self.out(x)


class FPNSegmenter(nn.Module):
    """Images -> ``{"out": logits}`` at the input's resolution (the segmentation output contract)."""

    def __init__(self, backbone: ResizingBackbone, head: nn.Module) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = head

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        logits = self.head(self.backbone(x))
        return {"out": F.interpolate(logits, size=x.shape[-2:], mode="bilinear", align_corners=False)}


def mobilenet_v2_fpn(
    num_classes: int, input_size: int = 128, width: int = 64, taps: tuple[int, ...] = (3, 6, 13, 17)
) -> FPNSegmenter:
    """MobileNetV2 stages ``taps`` (block indices of ``features``; 17 is the 320-channel top at stride 32)
    under a top-down decoder. The body's outputs are named ``"0"``, ``"1"``, ... finest first, the top
    one ``"out"`` as in torchvision's segmentation backbones, so one point ``key`` serves both sides."""
    features = torchvision.models.mobilenet_v2(weights=None).features
    names = {str(t): str(i) for i, t in enumerate(taps)} | {str(taps[-1]): "out"}
    body = IntermediateLayerGetter(features[: max(taps) + 1], names)
    head = TopDownHead([features[t].out_channels for t in taps], num_classes, width)
    return FPNSegmenter(ResizingBackbone(body, input_size), head)
