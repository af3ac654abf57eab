"""A model of your own, trained and distilled by ``avatarkd`` through ``model.factory``.

``own_model.yaml`` names it as ``my_model:SmallSegNet``; avatarkd finds this file because it sits
beside the YAML file (a module on ``PYTHONPATH`` or an installed package works the same way).
The factory receives ``num_classes`` from the data (because it has such a parameter) and the
YAML's ``model.kwargs``.

Output contract for segmentation: a tensor of logits ``(N, num_classes, h, w)`` or a dict holding
it under ``"out"``, at any resolution (avatarkd upsamples it to the mask for the loss and the
metric). Classification: ``(N, num_classes)`` logits. Detection: the torchvision detection API.
"""

from __future__ import annotations

import torch
from torch import nn


def _block(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(inplace=True))


class SmallSegNet(nn.Module):
    """Three strided blocks and a 1x1 classifier: logits at 1/8 of the input resolution.

    Distillation points name its modules by path: ``encoder`` (stride 8 features), ``encoder.1``
    (stride 4), ``classifier`` (the logits).
    """

    def __init__(self, num_classes: int, width: int = 32) -> None:
        super().__init__()
        self.encoder = nn.Sequential(_block(3, width, 2), _block(width, 2 * width, 2), _block(2 * width, 4 * width, 2))
        self.classifier = nn.Conv2d(4 * width, num_classes, 1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.encoder(images))
