"""Whole-image and sliding-window segmentation inference return logits at the label's size."""

from __future__ import annotations

import torch
from torch import nn

from avatarkd.config import EvalConfig
from avatarkd.tasks.seg_inference import segment_logits, window_starts


class PixelWise(nn.Module):
    """A 1x1 convolution: its logits at a pixel depend on that pixel only, so windows must agree with the whole."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 4, 1)

    def forward(self, x):
        return {"out": self.conv(x)}


class Strided(PixelWise):
    """Returns logits at half the input size (like a model without its final upsampling)."""

    def forward(self, x):
        return {"out": self.conv(x[..., ::2, ::2])}


def test_windows_cover_every_pixel_and_stay_inside():
    for length, crop, stride in ((100, 32, 21), (32, 32, 21), (20, 32, 21), (1024, 512, 341)):
        starts = window_starts(length, crop, stride)
        covered = torch.zeros(length, dtype=torch.bool)
        for s in starts:
            assert 0 <= s and (s + crop <= length or s == 0)
            covered[s : s + crop] = True
        assert covered.all()
    assert window_starts(1024, 512, 341) == [0, 341, 512]


def test_slide_equals_whole_for_a_pixelwise_model_and_sizes_come_back():
    model, images = PixelWise(), torch.rand(2, 3, 37, 53)
    whole = segment_logits(model, images, EvalConfig())
    slide = segment_logits(model, images, EvalConfig(mode="slide", crop_size=(16, 24), stride=(10, 11)))
    assert whole.shape == slide.shape == (2, 4, 37, 53)
    assert torch.allclose(whole, slide, atol=1e-6)
    resized = segment_logits(model, images, EvalConfig(resize=(20, 30)))  # run at ~20x29, logits back to 37x53
    assert resized.shape == (2, 4, 37, 53) and not torch.allclose(resized, whole)
    assert segment_logits(Strided(), images, EvalConfig()).shape == (2, 4, 37, 53)
    big_window = segment_logits(model, images, EvalConfig(mode="slide", crop_size=(64, 64)))
    assert torch.allclose(big_window, whole, atol=1e-6)  # a window larger than the image: one pass
