"""Any ``nn.Module`` from the config: ``model.factory: "package.module:callable"`` with ``model.kwargs``.

The module is imported the normal way (installed packages, ``PYTHONPATH``), and, failing that, from
the folder of the YAML file that names it, so a ``my_net.py`` beside ``train.yaml`` needs no setup.
Every way this can go wrong (no such module, no such attribute, not callable, wrong arguments, not
a module) is a one-line ``ConfigError``.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import torch.hub
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


CLASS_COUNT_NAMES = ("num_classes", "classes", "num_labels")  # torchvision/timm, smp, Hugging Face
ONLINE_ENV = "AVATARKD_ALLOW_DOWNLOADS"  # "1": build third-party factories with downloads allowed
_DOWNLOAD_ERRORS = {"LocalEntryNotFoundError", "OfflineModeIsEnabled", "DownloadRefused"}


class DownloadRefused(RuntimeError):
    """A factory tried to download while avatarkd built it offline."""


def _refuse_download(url: str, *args: Any, **kwargs: Any) -> None:
    raise DownloadRefused(f"download of {url} refused (avatarkd builds models offline)")


@contextmanager
def offline() -> Iterator[None]:
    """Hugging Face hub offline and torch.hub downloads refused, for the duration of a model build.

    Why: avatarkd never downloads; a factory that would (smp's default ``encoder_weights='imagenet'``,
    a ``from_pretrained`` hub id, ``timm.create_model(pretrained=True)``) must fail at once, not after
    half a minute of retries, and say which argument to set. Files already in the local caches are
    still read. Nothing stays patched after the build.
    """
    if os.environ.get(ONLINE_ENV) == "1":
        yield
        return
    # huggingface_hub reads the environment once, at import (so import it before changing the
    # environment, to restore its own value): its constant is what counts
    hub = importlib.import_module("huggingface_hub.constants") if importlib.util.find_spec("huggingface_hub") else None
    saved_env = {name: os.environ.get(name) for name in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        if hasattr(owner, name):
            patched.append((owner, name, getattr(owner, name)))
            setattr(owner, name, value)

    try:
        os.environ.update(HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
        patch(torch.hub, "download_url_to_file", _refuse_download)
        if hub is not None:
            patch(hub, "HF_HUB_OFFLINE", True)
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)
        for name, value in saved_env.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _download_attempt(err: BaseException) -> bool:
    seen: set[int] = set()
    current: BaseException | None = err
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        text = str(current)
        if type(current).__name__ in _DOWNLOAD_ERRORS or "offline mode" in text.lower() or "HF_HUB_OFFLINE" in text:
            return True
        current = current.__cause__ or current.__context__
    return False


def _weight_arguments(fn: Callable[..., Any], call: dict[str, Any]) -> list[str]:
    """The factory's pretrained-weights arguments that ask for a download (``encoder_weights='imagenet'``)."""
    try:
        params = inspect.signature(fn).parameters
    except (TypeError, ValueError):
        params = {}  # type: ignore[assignment]
    found = []
    for name, param in params.items():
        if ("weights" in name or "pretrained" in name) and "only" not in name:
            value = call.get(name, param.default)
            if value not in (None, False, inspect.Parameter.empty):
                fix = "<a local folder>" if "path" in name else "false" if value is True else "null"
                found.append(f"{name}: {fix}")
    return found


def _class_count_name(fn: Callable[..., Any], call: dict[str, Any], config_class: Any) -> str | None:
    """Which of ``num_classes`` / ``classes`` / ``num_labels`` the factory takes (None: none, or already set)."""
    if any(name in call for name in CLASS_COUNT_NAMES) or (config_class is not None and "id2label" in call):
        return None
    if config_class is not None:  # Hugging Face configs take num_labels (a property, not in every signature)
        return "num_labels"
    return next((name for name in CLASS_COUNT_NAMES if accepts(fn, name)), None)


def _config_class(fn: Callable[..., Any]) -> Any:
    """``cls.config_class`` when ``fn`` is a class built from a config object (a Hugging Face ``PreTrainedModel``)."""
    config_class = getattr(fn, "config_class", None)
    if inspect.isclass(fn) and config_class is not None and callable(config_class) and accepts(fn, "config"):
        return config_class
    return None


def build_from_factory(
    spec: str, kwargs: dict[str, Any], num_classes: int | None = None, search_dirs: Sequence[Path] = ()
) -> nn.Module:
    """Call the factory with ``kwargs`` (plus the data's class count, when it takes one that ``kwargs`` do not set).

    Why inject the class count: it is read from the data, and a config that hard-codes it breaks
    when the data changes. Libraries name it differently (torchvision ``num_classes``, smp
    ``classes``, Hugging Face ``num_labels``); the one the factory takes is used and logged. A class
    taking a ``config`` (Hugging Face) is built as ``cls(cls.config_class(**kwargs))``. The build
    runs offline (``offline()``); a download attempt is one line naming the argument to set. The
    factory must return an ``nn.Module``.
    """
    with offline():
        fn = resolve_factory(spec, search_dirs)
        config_class = _config_class(fn)
        call = dict(kwargs)
        if num_classes is not None and (name := _class_count_name(fn, call, config_class)) is not None:
            call[name] = num_classes
            log.info("model.factory %s: the data's %d classes passed as %s", spec, num_classes, name)
        if getattr(fn, "__module__", "").startswith("torchvision.models"):
            # torchvision builders download a pretrained backbone by default (weights_backbone); avatarkd
            # never downloads: pretrained weights come through model.weights / model.backbone_weights
            for name in ("weights", "weights_backbone"):
                if name not in call and accepts(fn, name):
                    call[name] = None
        try:
            model = fn(config_class(**call)) if config_class is not None else fn(**call)
        except Exception as err:
            if _download_attempt(err):
                args = _weight_arguments(fn, call)
                fix = (
                    f"set kwargs {{{', '.join(args)}}}" if args else "set the factory's pretrained-weights argument off"
                )
                raise ConfigError(
                    f"model.factory {spec!r} tried to download weights, and avatarkd builds models offline: {fix} "
                    "and give a local file as model.backbone_weights (or model.weights)"
                ) from None
            how = f"{getattr(config_class, '__name__', 'config')}(**kwargs)" if config_class is not None else "kwargs"
            raise ConfigError(f"model.factory {spec!r} with {how} {call} raised {_first_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ConfigError(f"model.factory {spec!r} returned a {type(model).__name__}, not a torch.nn.Module")
    record_recipe(model, spec, call, via="config_class" if config_class is not None else None)
    return model


__all__ = ["CLASS_COUNT_NAMES", "DownloadRefused", "accepts", "build_from_factory", "offline", "resolve_factory"]
