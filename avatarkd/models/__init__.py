"""Models: built-in segmenters/detectors/classifiers on any torchvision or timm backbone, user factories,
weights from any common layout, and per-model input normalisation."""

from .builders import DETECTORS, SEG_HEADS, build_classifier, build_detector, build_segmenter
from .factory import build_from_factory, resolve_factory
from .normalization import (
    IMAGENET,
    Normalization,
    attach_normalization,
    configure_normalization,
    input_normalization,
    normalization_from,
    normalization_key,
    normalize_images,
    resolve_normalization,
)
from .outputs import describe_output, output_item
from .recipes import recipe_of, record_recipe
from .weights import exported_normalization, load_configured_weights, load_weights, read_weights

__all__ = [
    "DETECTORS",
    "IMAGENET",
    "Normalization",
    "SEG_HEADS",
    "attach_normalization",
    "build_classifier",
    "build_detector",
    "build_from_factory",
    "build_segmenter",
    "configure_normalization",
    "describe_output",
    "exported_normalization",
    "input_normalization",
    "load_configured_weights",
    "load_weights",
    "normalization_from",
    "normalization_key",
    "normalize_images",
    "output_item",
    "read_weights",
    "recipe_of",
    "record_recipe",
    "resolve_factory",
    "resolve_normalization",
]
