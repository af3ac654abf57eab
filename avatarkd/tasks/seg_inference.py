"""Segmentation inference at the label's resolution: whole image or sliding window, optional resize.

Evaluation compares predictions with the mask as stored, at the image's original size. ``whole``
runs the model once on the (optionally resized) image; ``slide`` runs it on overlapping windows
and averages the logits where windows overlap (for images too large for one pass, or models
trained on crops). The logits are resized back to the label size before the argmax.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config import EvalConfig
from ..data.transforms import fit_scale, scaled
from ..models import output_item


def _logits(model: nn.Module, images: Tensor, output_key: str | None = None) -> Tensor:
    """The model's logits (``output_key``, see ``output_item``) at the input's size (bilinear when smaller)."""
    logits = output_item(model(images), output_key)
    if tuple(logits.shape[-2:]) != tuple(images.shape[-2:]):
        logits = F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)
    return logits


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Window offsets covering ``length``; the last window is pulled back to end at the border."""
    count = max(math.ceil((length - crop) / stride), 0) + 1
    return sorted({max(min(i * stride, length - crop), 0) for i in range(count)})


def slide_logits(
    model: nn.Module, images: Tensor, crop: tuple[int, int], stride: tuple[int, int], output_key: str | None = None
) -> Tensor:
    """Logits averaged over ``crop`` windows every ``stride`` pixels (a window never passes the border)."""
    height, width = images.shape[-2:]
    total: Tensor | None = None
    count = images.new_zeros((1, 1, height, width))
    for top in window_starts(height, crop[0], stride[0]):
        for left in window_starts(width, crop[1], stride[1]):
            bottom, right = min(top + crop[0], height), min(left + crop[1], width)
            logits = _logits(model, images[..., top:bottom, left:right], output_key).float()
            if total is None:
                total = images.new_zeros((images.shape[0], logits.shape[1], height, width), dtype=torch.float32)
            total[..., top:bottom, left:right] += logits
            count[..., top:bottom, left:right] += 1
    assert total is not None
    return total / count


def segment_logits(model: nn.Module, images: Tensor, eval_cfg: EvalConfig, output_key: str | None = None) -> Tensor:
    """(N, C, H, W) logits at the size of ``images`` (N, 3, H, W), by ``eval.mode`` and ``eval.resize``."""
    height, width = images.shape[-2:]
    x = images
    if eval_cfg.resize is not None:
        size = scaled(height, width, fit_scale(height, width, eval_cfg.resize))
        if size != (height, width):
            x = F.interpolate(images, size=size, mode="bilinear", align_corners=False)
    if eval_cfg.mode == "slide":
        logits = slide_logits(model, x, *eval_cfg.window(), output_key=output_key)
    else:
        logits = _logits(model, x, output_key)
    if tuple(logits.shape[-2:]) != (height, width):
        logits = F.interpolate(logits.float(), size=(height, width), mode="bilinear", align_corners=False)
    return logits
