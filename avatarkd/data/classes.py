"""How many classes a dataset has and what they are called, and where that answer came from.

The order of trust: the format itself (Cityscapes' 19, VOC's 21, ADE20K's 150), then what the
config says (``data.class_names``, ``data.num_classes``), then the data (COCO categories beside
the masks, else a scan of the masks). Names nobody gave are ``class_<i>``: a metric is never
labelled with another dataset's names. The source is kept on the dataset (``class_source``) so the
run can log it.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ..config import DataConfig
from ..errors import ConfigError
from .io import read_json
from .labels import generic_names
from .segmentation import SegmentationPairs, scan_class_count


def names_from_categories(path: Path | None) -> list[str] | None:
    """``["background", *categories]`` when ``path`` is a COCO file whose category ids are 1..K.

    That is how the bundled canvases (and many converted sets) pair masks with a COCO file: mask
    value k is category k. Other id schemes say nothing about mask values, so they give no names.
    """
    if path is None or not Path(path).is_file():
        return None
    data: Any = read_json(Path(path), "annotation file")
    cats = data.get("categories") if isinstance(data, dict) else None
    if not isinstance(cats, list) or not cats or not all(isinstance(c, dict) for c in cats):
        return None
    cats = sorted(cats, key=lambda c: c.get("id", 0))
    if [c.get("id") for c in cats] != list(range(1, len(cats) + 1)):
        return None
    return ["background"] + [str(c.get("name", c["id"])) for c in cats]


def resolve_segmentation_classes(
    dataset: SegmentationPairs,
    data: DataConfig,
    format_name: str,
    format_names: Sequence[str] | None,
    annotations: Path | None,
) -> None:
    """Sets ``num_classes``, ``class_names`` and ``class_source`` of a segmentation dataset."""
    if format_names is not None:
        count, names, source = len(format_names), list(format_names), f"the {format_name} format"
        if data.num_classes is not None and data.num_classes != count:
            raise ConfigError(
                f"data.num_classes: {data.num_classes} given, but the {format_name} format has "
                f"{count} classes; remove data.num_classes"
            )
    elif data.class_names is not None:
        count, names, source = len(data.class_names), list(data.class_names), "data.class_names"
    elif data.num_classes is not None:
        count = data.num_classes
        found = names_from_categories(annotations)
        names, source = (
            (found, f"data.num_classes, names from {annotations}")
            if found and len(found) == count
            else (generic_names(count), "data.num_classes")
        )
    elif (found := names_from_categories(annotations)) is not None:
        count, names, source = len(found), found, f"the categories of {annotations}"
    else:
        count = scan_class_count(dataset)
        names = generic_names(count)
        source = (
            f"a scan of the {len(dataset)} masks (largest class id {count - 1}; set data.num_classes to skip the scan)"
        )
    if data.class_names is not None and format_names is not None:
        names, source = rename(names, data.class_names, source)
    dataset.num_classes, dataset.class_names, dataset.class_source = count, names, source


def rename(names: list[str], given: Sequence[str] | None, source: str) -> tuple[list[str], str]:
    """``data.class_names`` as display names for classes counted elsewhere; the count must agree."""
    if given is None:
        return names, source
    if len(given) != len(names):
        raise ConfigError(f"data.class_names: {len(given)} names given, but {source} gives {len(names)} classes")
    return list(given), f"{source}, names from data.class_names"


def check_count(count: int, data: DataConfig, source: str) -> None:
    """A ``data.num_classes`` that contradicts the data (detection, classification) is a config error."""
    if data.num_classes is not None and data.num_classes != count:
        raise ConfigError(
            f"data.num_classes: {data.num_classes} given, but {source} gives {count} classes; remove data.num_classes"
        )
