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


def output_item(output: Any, key: str | None = None) -> Any:
    """The task's logits in a model's output: the output itself when a tensor, else its item ``key``
    (``model.output_key``; a dict key or an attribute). Without a key: ``out`` (torchvision), or
    ``logits`` when the output has that and no ``out`` (a Hugging Face ``ModelOutput``). None when absent.
    """
    if isinstance(output, Tensor):
        return output
    if key is None:
        if not isinstance(output, Mapping):
            return output
        key = "logits" if "out" not in output and "logits" in output else "out"
    if isinstance(output, Mapping) and key in output:
        return output[key]
    return getattr(output, key, None)


__all__ = ["describe_output", "output_item"]
