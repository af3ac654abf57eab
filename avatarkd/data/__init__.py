"""Datasets for the three tasks in the published formats, their augmentation, and the bundled demo data.

``open_dataset(task, format, root, split)`` is the entry point; ``FORMATS`` the table of formats.
"""

from __future__ import annotations

from .check import SplitReport, check_dataset, format_reports
from .classification import ImageFolderDataset
from .coco import CocoDetection, collate_detection
from .entry import data_root, demo_data_root, open_dataset, train_transform
from .formats import FORMATS
from .io import SizeMismatchError, UnreadableError
from .labels import generic_names
from .segmentation import SegmentationPairs
from .transforms import pad_to
from .wrappers import Augmented, SkipUnreadable, innermost, set_epoch

__all__ = [
    "Augmented",
    "CocoDetection",
    "FORMATS",
    "ImageFolderDataset",
    "SegmentationPairs",
    "SizeMismatchError",
    "SkipUnreadable",
    "SplitReport",
    "UnreadableError",
    "check_dataset",
    "collate_detection",
    "data_root",
    "demo_data_root",
    "format_reports",
    "generic_names",
    "innermost",
    "open_dataset",
    "pad_to",
    "set_epoch",
    "train_transform",
]
