"""Training augmentation that keeps images, masks and boxes consistent, drawn from an explicit generator.

Every random choice is drawn from the ``generator`` argument (``data.wrappers.Augmented`` seeds one
per sample from ``(seed, epoch, index)``), never from torch's global RNG, so augmentation does not
depend on worker count, rank or where a run was resumed, and nothing has to be re-seeded.

Images are float 3xHxW in [0, 1] (normalisation belongs to the model); masks are int64 HxW class
ids. Geometry is applied to image and mask with the same sampling grid: bilinear for the image,
"nearest-exact" for the mask (both sample at pixel centres, so a label stays under its pixel).

The segmentation pipeline is the one segmentation toolkits train with: random rescale by a ratio
of a base size, random crop (padding image with 0 and mask with ignore where the image is smaller),
horizontal flip, optional photometric distortion.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor
from torchvision.transforms.v2 import functional as TF

Size = tuple[int, int]


def as_size(value: Sequence[int]) -> Size:
    """(height, width) from a config list; the configs validate that it has two entries."""
    height, width = value
    return int(height), int(width)


# ----------------------------------------------------------------------------- draws
def uniform(generator: torch.Generator, low: float, high: float) -> float:
    return low + (high - low) * float(torch.rand((), generator=generator))


def coin(probability: float, generator: torch.Generator) -> bool:
    """True with the given probability; draws nothing when the probability is 0 or 1."""
    if probability <= 0.0:
        return False
    if probability >= 1.0:
        return True
    return bool(torch.rand((), generator=generator) < probability)


def randint(generator: torch.Generator, high: int) -> int:
    """An integer in [0, high] (inclusive)."""
    return int(torch.randint(0, high + 1, (), generator=generator)) if high > 0 else 0


# ----------------------------------------------------------------------------- geometry
def hflip_image(image: Tensor) -> Tensor:
    return image.flip(-1)


def hflip_boxes(boxes: Tensor, width: int) -> Tensor:
    """Mirror xyxy boxes in an image ``width`` pixels wide (x1 becomes width - x2)."""
    flipped = boxes.clone()
    flipped[:, 0] = width - boxes[:, 2]
    flipped[:, 2] = width - boxes[:, 0]
    return flipped


def fit_scale(height: int, width: int, size: Size) -> float:
    """The aspect-preserving factor that fits the long edge to max(size) and the short to min(size).

    The tighter of the two constraints wins, so ``[1024, 2048]`` leaves a 1024x2048 Cityscapes image
    as it is and brings a 512x512 image to 1024x1024.
    """
    return min(max(size) / max(height, width), min(size) / min(height, width))


def scaled(height: int, width: int, factor: float) -> Size:
    return max(1, int(height * factor + 0.5)), max(1, int(width * factor + 0.5))


def resize_image(image: Tensor, size: Size) -> Tensor:
    if tuple(image.shape[-2:]) == tuple(size):
        return image
    return F.interpolate(image[None], size=size, mode="bilinear", align_corners=False)[0].clamp_(0.0, 1.0)


def resize_mask(mask: Tensor, size: Size) -> Tensor:
    if tuple(mask.shape[-2:]) == tuple(size):
        return mask
    return F.interpolate(mask[None, None].float(), size=size, mode="nearest-exact")[0, 0].long()


def pad_to(image: Tensor, mask: Tensor | None, size: Size, ignore_index: int) -> tuple[Tensor, Tensor | None]:
    """Pad on the bottom and right to at least ``size``: the image with 0, the mask with ``ignore_index``."""
    dh, dw = max(0, size[0] - image.shape[-2]), max(0, size[1] - image.shape[-1])
    if dh == 0 and dw == 0:
        return image, mask
    image = F.pad(image, (0, dw, 0, dh), value=0.0)
    if mask is not None:
        mask = F.pad(mask, (0, dw, 0, dh), value=ignore_index)
    return image, mask


def random_crop(
    image: Tensor, mask: Tensor, size: Size, ignore_index: int, generator: torch.Generator
) -> tuple[Tensor, Tensor]:
    """A ``size`` window at a random position; an image smaller than ``size`` is padded first."""
    image, padded = pad_to(image, mask, size, ignore_index)
    assert padded is not None
    top = randint(generator, image.shape[-2] - size[0])
    left = randint(generator, image.shape[-1] - size[1])
    window = (slice(top, top + size[0]), slice(left, left + size[1]))
    return image[(..., *window)], padded[window]


# ----------------------------------------------------------------------------- colour
def photometric_distortion(image: Tensor, generator: torch.Generator) -> Tensor:
    """Random brightness, contrast, saturation and hue, each applied with probability 1/2.

    The magnitudes are the usual ones for segmentation training: brightness +-32/255, contrast and
    saturation x[0.5, 1.5], hue +-18 degrees on the 0-180 hue scale (a tenth of the colour circle);
    contrast goes first or last with equal chance. Pixels stay in [0, 1]. A per-pixel colour map: it
    never moves a pixel, so the mask needs no change.
    """

    def brightness(x: Tensor) -> Tensor:
        return (x + uniform(generator, -32 / 255, 32 / 255)).clamp_(0, 1) if coin(0.5, generator) else x

    def contrast(x: Tensor) -> Tensor:
        return (x * uniform(generator, 0.5, 1.5)).clamp_(0, 1) if coin(0.5, generator) else x

    image = brightness(image)
    contrast_first = coin(0.5, generator)
    if contrast_first:
        image = contrast(image)
    if coin(0.5, generator):
        image = TF.adjust_saturation(image, uniform(generator, 0.5, 1.5)).clamp_(0, 1)
    if coin(0.5, generator):
        image = TF.adjust_hue(image, uniform(generator, -0.1, 0.1)).clamp_(0, 1)
    if not contrast_first:
        image = contrast(image)
    return image


# ----------------------------------------------------------------------------- pipelines
class SegmentationAugment:
    """Random rescale -> random crop (with padding) -> horizontal flip -> photometric distortion.

    ``scale_range``: the ratio is drawn uniformly from it and applied to ``base_size`` (an
    aspect-preserving fit, see ``fit_scale``) or, without ``base_size``, to the image's own size.
    Every step is optional; with only ``hflip`` this is the plain flip of the bundled configs.
    """

    def __init__(
        self,
        crop_size: Size | None = None,
        scale_range: tuple[float, float] | None = None,
        base_size: Size | None = None,
        hflip: float = 0.5,
        photometric: bool = False,
        ignore_index: int = 255,
    ) -> None:
        self.crop_size = as_size(crop_size) if crop_size is not None else None
        self.scale_range = scale_range
        self.base_size = as_size(base_size) if base_size is not None else None
        self.hflip = float(hflip)
        self.photometric = photometric
        self.ignore_index = ignore_index

    def __call__(self, image: Tensor, mask: Tensor, *, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        height, width = image.shape[-2:]
        factor = fit_scale(height, width, self.base_size) if self.base_size is not None else 1.0
        if self.scale_range is not None:
            factor *= uniform(generator, *self.scale_range)
        if factor != 1.0:
            size = scaled(height, width, factor)
            image, mask = resize_image(image, size), resize_mask(mask, size)
        if self.crop_size is not None:
            image, mask = random_crop(image, mask, self.crop_size, self.ignore_index, generator)
        if coin(self.hflip, generator):
            image, mask = hflip_image(image), mask.flip(-1)
        if self.photometric:
            image = photometric_distortion(image, generator)
        return image.contiguous(), mask.contiguous()

    def __repr__(self) -> str:
        return (
            f"SegmentationAugment(crop_size={self.crop_size}, scale_range={self.scale_range}, "
            f"base_size={self.base_size}, hflip={self.hflip}, photometric={self.photometric})"
        )


class DetectionAugment:
    """Horizontal flip of the image and its boxes.

    Resizing (shorter/longer side, multi-scale) is left to the detector's own transform, which
    also maps predicted boxes back to the original image for COCO evaluation.
    """

    def __init__(self, hflip: float = 0.5) -> None:
        self.hflip = float(hflip)

    def __call__(
        self, image: Tensor, target: dict[str, Tensor], *, generator: torch.Generator
    ) -> tuple[Tensor, dict[str, Tensor]]:
        if coin(self.hflip, generator):
            target = dict(target, boxes=hflip_boxes(target["boxes"], image.shape[-1]))
            image = hflip_image(image)
        return image, target


def random_resized_box(
    height: int,
    width: int,
    generator: torch.Generator,
    area: tuple[float, float] = (0.08, 1.0),
    ratio: tuple[float, float] = (3 / 4, 4 / 3),
) -> tuple[int, int, int, int]:
    """(top, left, h, w) of a window covering a random fraction of the area at a random aspect ratio.

    Ten tries to fit such a window inside the image; otherwise the largest centred window whose
    aspect ratio lies in ``ratio``.
    """
    total = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target = total * uniform(generator, *area)
        aspect = math.exp(uniform(generator, *log_ratio))
        w, h = int(round(math.sqrt(target * aspect))), int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return randint(generator, height - h), randint(generator, width - w), h, w
    aspect = width / height
    if aspect < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif aspect > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        h, w = height, width
    return (height - h) // 2, (width - w) // 2, h, w


class ClassificationAugment:
    """Random resized crop to ``crop_size`` (if set) and horizontal flip."""

    def __init__(self, crop_size: Size | None = None, hflip: float = 0.5) -> None:
        self.crop_size = as_size(crop_size) if crop_size is not None else None
        self.hflip = float(hflip)

    def __call__(self, image: Tensor, label: int, *, generator: torch.Generator) -> tuple[Tensor, int]:
        if self.crop_size is not None:
            top, left, h, w = random_resized_box(image.shape[-2], image.shape[-1], generator)
            image = resize_image(image[:, top : top + h, left : left + w], self.crop_size)
        if coin(self.hflip, generator):
            image = hflip_image(image)
        return image.contiguous(), label


class CenterCrop:
    """Evaluation view of a classification image: shorter side to crop / 0.875, then the centre crop."""

    def __init__(self, crop_size: Size) -> None:
        self.crop_size = as_size(crop_size)

    def __call__(self, image: Tensor, label: int) -> tuple[Tensor, int]:
        height, width = image.shape[-2:]
        factor = max(self.crop_size) / 0.875 / min(height, width)
        image = resize_image(image, scaled(height, width, factor))
        top = max(0, (image.shape[-2] - self.crop_size[0]) // 2)
        left = max(0, (image.shape[-1] - self.crop_size[1]) // 2)
        image, _ = pad_to(
            image[:, top : top + self.crop_size[0], left : left + self.crop_size[1]], None, self.crop_size, 0
        )
        return image.contiguous(), label
