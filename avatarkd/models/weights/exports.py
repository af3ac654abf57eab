"""What an avatarkd export says about its weights: the input normalisation in ``student.json``.

A teacher loaded from an avatarkd export keeps the inputs it was trained on; any other file says
nothing ("unknown"), and ``models.normalization.resolve_normalization`` decides.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from .hub import TORCHVISION_PREFIX


def recorded_normalization(path: str | Path) -> Any:
    """What an avatarkd export recorded as its input normalisation (``student.json`` beside it), else "unknown"."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return "unknown"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return "unknown"
    return meta.get("normalize", "unknown") if isinstance(meta, dict) else "unknown"


def exported_normalization(mcfg: Any) -> Any:
    """What ``model.weights`` recorded about input normalisation, when it is an avatarkd export; else "unknown".

    Backbone weights and torchvision enums record nothing.
    """
    weights = mcfg.weights
    if weights is None or str(weights).startswith(TORCHVISION_PREFIX):
        return "unknown"
    return recorded_normalization(weights)


__all__ = ["exported_normalization", "recorded_normalization"]
