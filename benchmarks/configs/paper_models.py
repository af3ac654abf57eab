"""The paper-regime study's segmenters, built through ``model.factory`` (found beside the YAML).

One architecture for teacher and student, two ImageNet-pretrained backbones, as in the paper's
pairs (the same head on ResNet-101 and ResNet-18): a top-down decoder over four backbone stages
at strides 4, 8, 16 and 32, with the canvases upsampled to ``input_size`` inside the backbone so
that teacher and student see the same images at the same resolution (the bundled canvases are
64 px; the pretrained filters need more pixels to look at).

- ``backbone="mobilenet_v2"``: torchvision's MobileNetV2 ``features`` (taps 3, 6, 13, 17: 24, 32,
  96, 320 channels), loaded from ``torchvision:MobileNet_V2_Weights.IMAGENET1K_V1``;
- ``backbone="timm:<name>"``: a timm ``features_only`` model (out_indices 1-4), e.g.
  ``tf_efficientnet_lite2`` (24, 48, 120, 352 channels), loaded from the timm-layout copy of the
  EfficientNet-Lite file (``benchmarks/pretrained.py``).

Either way ``backbone.body`` is what ``model.backbone_weights`` loads into, its outputs are named
``"0"``, ``"1"``, ``"2"`` and ``"out"`` (finest first), and ``head`` returns the logits at stride 4
before the final upsampling: the study distils ``head`` (the logit maps) and ``backbone.body``
key ``out`` (the last feature stage).
"""

from __future__ import annotations

import torchvision
from study_models import FPNSegmenter, ResizingBackbone, TopDownHead  # beside this file (model.factory's lookup)
from torch import Tensor, nn
from torchvision.models._utils import IntermediateLayerGetter


class NamedFeatures(nn.Module):
    """A timm ``features_only`` model whose list of levels is returned as ``{"0", "1", "2", "out"}``."""

    def __init__(self, name: str, out_indices: tuple[int, ...] = (1, 2, 3, 4)) -> None:
        super().__init__()
        import timm

        self.body = timm.create_model(name, pretrained=False, features_only=True, out_indices=out_indices)
        self.channels = list(self.body.feature_info.channels())

    def forward(self, x: Tensor) -> dict[str, Tensor]:
        feats = self.body(x)
        names = [str(i) for i in range(len(feats) - 1)] + ["out"]
        return dict(zip(names, feats, strict=True))


def segmenter(num_classes: int, backbone: str = "mobilenet_v2", input_size: int = 128, width: int = 64) -> nn.Module:
    """Images -> ``{"out": logits}`` at the input's resolution; see the module docstring."""
    if backbone.startswith("timm:"):
        named = NamedFeatures(backbone[len("timm:") :])
        body: nn.Module = named
        channels = named.channels
    elif backbone == "mobilenet_v2":
        taps = (3, 6, 13, 17)
        features = torchvision.models.mobilenet_v2(weights=None).features
        names = {str(t): str(i) for i, t in enumerate(taps)} | {str(taps[-1]): "out"}
        body = IntermediateLayerGetter(features[: max(taps) + 1], names)
        channels = [features[t].out_channels for t in taps]
    else:
        raise ValueError(f"backbone must be 'mobilenet_v2' or 'timm:<name>', got {backbone!r}")
    return FPNSegmenter(ResizingBackbone(body, input_size), TopDownHead(channels, num_classes, width))
