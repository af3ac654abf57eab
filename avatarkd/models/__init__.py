"""Model builders: torchvision segmenters, detectors and classifiers sized from arguments."""

from .builders import build_classifier, build_detector, build_segmenter

__all__ = ["build_classifier", "build_detector", "build_segmenter"]
