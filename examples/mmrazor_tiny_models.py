"""Two tiny MMEngine segmenters for ``mmrazor_akd_config.py``: stand-ins for your MMSegmentation models.

In a real MMRazor project ``architecture`` and ``teacher`` are your mmseg/mmdet configs; these
exist so that the example config runs anywhere in seconds (``tests/test_integrations_mmrazor.py``).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from mmengine.model import BaseModel
from mmrazor.registry import MODELS
from torch import nn


class TinySegmenter(BaseModel):
    """``backbone`` (two strided convs, ``width`` channels at stride 4) then a 1x1 ``head``: logits at 1/4."""

    def __init__(self, num_classes: int = 11, width: int = 16, ignore_index: int = 255) -> None:
        super().__init__()
        self.backbone = nn.Sequential(
            nn.Conv2d(3, width, 3, 2, 1), nn.BatchNorm2d(width), nn.ReLU(), nn.Conv2d(width, width, 3, 2, 1), nn.ReLU()
        )
        self.head = nn.Conv2d(width, num_classes, 1)
        self.ignore_index = ignore_index

    def forward(self, inputs: torch.Tensor, data_samples: torch.Tensor | None = None, mode: str = "tensor"):
        logits = self.head(self.backbone(inputs))
        if mode == "tensor":
            return logits
        logits = F.interpolate(logits, size=inputs.shape[-2:], mode="bilinear", align_corners=False)
        if mode == "predict":
            return logits.argmax(1)
        return {"loss_ce": F.cross_entropy(logits, data_samples, ignore_index=self.ignore_index)}


if "AvatarKDTinySegmenter" not in MODELS.module_dict:
    MODELS.register_module(name="AvatarKDTinySegmenter", module=TinySegmenter)
