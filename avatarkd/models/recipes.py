"""How each built model can be rebuilt, remembered beside the model rather than inside it.

The exported ``student.json`` must say which callable (and which arguments) makes a module that
``student.pt`` loads into with ``strict=True``. Keeping that record in a weak table, not as an
attribute or a buffer, leaves the user's module and its ``state_dict`` exactly as the factory made
them.
"""

from __future__ import annotations

import weakref
from typing import Any

from torch import nn

_RECIPES: weakref.WeakKeyDictionary[nn.Module, dict[str, Any]] = weakref.WeakKeyDictionary()


def record_recipe(model: nn.Module, factory: str, kwargs: dict[str, Any]) -> None:
    """Remember that ``factory`` (``"package.module:callable"``) called with ``kwargs`` made ``model``."""
    _RECIPES[model] = {"factory": factory, "kwargs": dict(kwargs)}


def recipe_of(model: nn.Module) -> dict[str, Any] | None:
    """``{"factory": ..., "kwargs": ...}`` for a model avatarkd built, else None."""
    found = _RECIPES.get(model)
    return {"factory": found["factory"], "kwargs": dict(found["kwargs"])} if found else None


__all__ = ["recipe_of", "record_recipe"]
