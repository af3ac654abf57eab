"""Random horizontal flip that keeps images, boxes and masks consistent.

The coin is tossed with torch's global RNG so the engine's per-sample seeding
(``SeededAugmentation``) makes augmentation reproducible regardless of worker count.
"""

from __future__ import annotations

import torch
from torch import Tensor


def coin(probability: float) -> bool:
    """True with the given probability; draws nothing when the probability is 0 (keeps RNG streams aligned)."""
    if probability <= 0.0:
        return False
    return bool(torch.rand(()) < probability)


def hflip_image(image: Tensor) -> Tensor:
    return image.flip(-1)


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes in an image ``width`` pixels wide (x1 becomes width - x2)."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped
