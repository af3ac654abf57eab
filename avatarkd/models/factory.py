"""Any ``nn.Module`` from the config: ``model.factory: "package.module:callable"`` with ``model.kwargs``.

The module is imported the normal way (installed packages, ``PYTHONPATH``), and, failing that, from
the folder of the YAML file that names it, so a ``my_net.py`` beside ``train.yaml`` needs no setup.
Every way this can go wrong (no such module, no such attribute, not callable, wrong arguments, not
a module) is a one-line ``ConfigError``.
"""

from __future__ import annotations

import importlib
import inspect
import logging
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from torch import nn

from ..errors import ConfigError
from ..naming import did_you_mean
from .recipes import record_recipe

log = logging.getLogger(__name__)


def _first_line(err: BaseException) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0]}" if text else type(err).__name__


def _import(module_name: str, spec: str, search_dirs: Sequence[Path]) -> Any:
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        if err.name is None or not (module_name == err.name or module_name.startswith(err.name + ".")):
            raise ConfigError(f"model.factory {spec!r}: importing {module_name!r} failed: {_first_line(err)}") from None
    for folder in search_dirs:
        if (folder / (module_name.split(".")[0] + ".py")).is_file() or (folder / module_name.split(".")[0]).is_dir():
            if str(folder) not in sys.path:
                sys.path.append(str(folder))
                importlib.invalidate_caches()
                log.info("model.factory: importing %s from %s", module_name, folder)
            return _import(module_name, spec, ())
    where = ", ".join(str(f) for f in search_dirs)
    raise ConfigError(
        f"model.factory {spec!r}: no module named {module_name!r} (not installed, not on PYTHONPATH"
        f"{', not in ' + where if where else ''})"
    )


def resolve_factory(spec: str, search_dirs: Sequence[Path] = ()) -> Callable[..., Any]:
    """The callable named by ``"package.module:callable"`` (the callable may be dotted: ``mod:Class.build``)."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ConfigError(f"model.factory: expected 'package.module:callable', got {spec!r}")
    try:
        obj: Any = _import(module_name, spec, search_dirs)
    except ConfigError:
        raise
    except Exception as err:
        raise ConfigError(f"model.factory {spec!r}: importing {module_name!r} failed: {_first_line(err)}") from None
    for part in attr.split("."):
        if not hasattr(obj, part):
            names = [n for n in dir(obj) if not n.startswith("_")]
            raise ConfigError(
                f"model.factory {spec!r}: {module_name!r} has no attribute {attr!r}{did_you_mean(part, names)}"
            )
        obj = getattr(obj, part)
    if not callable(obj):
        raise ConfigError(f"model.factory {spec!r}: {attr!r} is a {type(obj).__name__}, not a callable")
    return obj


def accepts(fn: Callable[..., Any], name: str) -> bool:
    """Whether ``fn`` takes a parameter called ``name`` (explicitly, not through ``**kwargs``)."""
    try:
        return name in inspect.signature(fn).parameters
    except (TypeError, ValueError):
        return False


def build_from_factory(
    spec: str, kwargs: dict[str, Any], num_classes: int | None = None, search_dirs: Sequence[Path] = ()
) -> nn.Module:
    """Call the factory with ``kwargs`` (plus ``num_classes`` when it takes one and ``kwargs`` do not set it).

    Why inject ``num_classes``: the number of classes is read from the data, and a config that
    hard-codes it breaks when the data changes. The factory must return an ``nn.Module``.
    """
    fn = resolve_factory(spec, search_dirs)
    call = dict(kwargs)
    if num_classes is not None and "num_classes" not in call and accepts(fn, "num_classes"):
        call["num_classes"] = num_classes
    if getattr(fn, "__module__", "").startswith("torchvision.models"):
        # torchvision builders download a pretrained backbone by default (weights_backbone); avatarkd
        # never downloads: pretrained weights come through model.weights / model.backbone_weights
        for name in ("weights", "weights_backbone"):
            if name not in call and accepts(fn, name):
                call[name] = None
    try:
        model = fn(**call)
    except Exception as err:
        raise ConfigError(f"model.factory {spec!r} with kwargs {call} raised {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    record_recipe(model, spec, call)
    return model


__all__ = ["accepts", "build_from_factory", "resolve_factory"]
