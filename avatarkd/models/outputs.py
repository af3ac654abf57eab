"""Short descriptions of what a model returned, for the one-line output-contract errors of the tasks."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from torch import Tensor


def describe_output(obj: Any, depth: int = 0) -> str:
    """What a model returned, in words for error messages.

    ``"a tensor of shape (2, 5)"``, ``"a dict with keys ['aux', 'out']"``, ``"a list of 2 dicts with keys [...]"``.
    """
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))[:6]}"
    if isinstance(obj, (list, tuple)):
        kind = type(obj).__name__
        if obj and depth == 0:
            return f"a {kind} of {len(obj)} items, the first {describe_output(obj[0], depth + 1)}"
        return f"a {kind} of {len(obj)} items"
    return f"a {type(obj).__name__}"


__all__ = ["describe_output"]
