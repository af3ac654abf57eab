"""Task metrics with one interface: ``update`` per batch, ``sync`` across ranks, ``compute``, ``reset``."""

from .classification import Top1Accuracy
from .detection import CocoEvaluator
from .predicted import PredictedClasses
from .segmentation import SegmentationMetric

__all__ = ["CocoEvaluator", "PredictedClasses", "SegmentationMetric", "Top1Accuracy"]
