"""Datasets for the three tasks, and the bundled Fashion-MNIST canvases used by the demos."""

from __future__ import annotations

from pathlib import Path

from ..errors import DataError
from .classification import ImageFolderDataset
from .coco import CocoDetection, collate_detection
from .segmentation import SegmentationFolder


def demo_data_root() -> Path:
    """The bundled ``fashion_canvas`` folder, found next to the installed package (wheel or checkout)."""
    root = Path(__file__).resolve().parent.parent / "demo_data" / "fashion_canvas"
    if not root.is_dir():
        raise DataError(f"bundled demo data not found at {root}; regenerate it with "
                        "`python scripts/make_demo_data.py` or reinstall avatarkd")
    return root


__all__ = ["CocoDetection", "ImageFolderDataset", "SegmentationFolder", "collate_detection", "demo_data_root"]
