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


def record_recipe(model: nn.Module, factory: str, kwargs: dict[str, Any], via: str | None = None) -> None:
    """Remember that ``factory`` (``"package.module:callable"``) called with ``kwargs`` made ``model``.

    ``via="config_class"``: the factory is a class taking a config object (a Hugging Face
    ``PreTrainedModel``), rebuilt as ``cls(cls.config_class(**kwargs))``.
    """
    _RECIPES[model] = {"factory": factory, "kwargs": dict(kwargs), **({"via": via} if via else {})}


def recipe_of(model: nn.Module) -> dict[str, Any] | None:
    """``{"factory": ..., "kwargs": ...[, "via": ...]}`` for a model avatarkd built, else None."""
    found = _RECIPES.get(model)
    return {**found, "kwargs": dict(found["kwargs"])} if found else None


__all__ = ["recipe_of", "record_recipe"]
