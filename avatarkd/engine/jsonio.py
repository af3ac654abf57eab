"""JSON that other tools can read: atomic writes, NaN/Inf as null."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any


def json_safe(obj: Any) -> Any:
    """NaN/Inf (e.g. the IoU of a class absent from the validation set) become null: valid JSON."""
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def atomic_write_json(path: Path, obj: Any) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(json_safe(obj), indent=2, default=str))
    tmp.replace(path)
