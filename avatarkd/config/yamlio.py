"""Loading YAML configs into pydantic models with one-line, actionable errors; ``--set`` overrides."""

from __future__ import annotations

import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..errors import ConfigError
from ..naming import closest

M = TypeVar("M", bound=BaseModel)


class _Loader(yaml.SafeLoader):
    """SafeLoader that reads ``2e-5`` as a float.

    YAML 1.1 (PyYAML) only takes exponent floats with a dot (``2.0e-5``) and silently turns
    ``2e-5`` into the *string* "2e-5", which would reach a loss as its scale; every ML config
    writes it the short way.
    """


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:[0-9][0-9_]*)(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"),
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=_Loader)


def _field_names(model: type[BaseModel], loc: Iterable[Any]) -> list[str]:
    """Field names of the (nested) model at ``loc``, for 'did you mean' hints."""
    current: Any = model
    for part in loc:
        if isinstance(part, int) or current is None:
            continue
        field = getattr(current, "model_fields", {}).get(part)
        if field is None:
            return []
        current = _model_in(field.annotation)
    return list(getattr(current, "model_fields", {}))


def _model_in(annotation: Any) -> type[BaseModel] | None:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in getattr(annotation, "__args__", ()) or ():
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def format_validation_error(err: ValidationError, model: type[BaseModel], source: str) -> str:
    """The first problem as ``source: a.b.c: message``, with the closest key for a misspelt one."""
    first = err.errors()[0]
    loc = [p for p in first["loc"]]
    where = ".".join(str(p) for p in loc) or "(top level)"
    msg = first["msg"]
    if first["type"] == "extra_forbidden":
        known = _field_names(model, loc[:-1])
        close = closest(str(loc[-1]), known)
        msg = "unknown key" + (f"; did you mean {close[0]!r}?" if close else f"; known keys: {', '.join(known)}")
    elif "input" in first and first["type"] not in ("missing",):
        msg += f" (got {first['input']!r})"
        if first["type"] == "literal_error" and isinstance(first["input"], str) and "did you mean" not in msg:
            choices = re.findall(r"'([^']*)'", str(first.get("ctx", {}).get("expected", "")))
            close = closest(first["input"], choices)
            msg += f"; did you mean {close[0]!r}?" if close else ""
    more = len(err.errors()) - 1
    return f"{source}: {where}: {msg}" + (f" (and {more} more problem{'s' * (more > 1)})" if more else "")


def validate(model: type[M], data: Any, source: str = "config") -> M:
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(format_validation_error(err, model, source)) from None


def load_yaml(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = parse_yaml(path.read_text())
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        raise ConfigError(f"{path}: malformed YAML{where}: {getattr(err, 'problem', err)}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping of keys, got {type(data).__name__}")
    return data


def apply_overrides(data: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """``a.b.c=value`` overrides (value parsed as YAML) into a nested config dict."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not of the form key.path=value")
        try:
            value = parse_yaml(raw)
        except yaml.YAMLError:
            value = raw
        node: Any = data
        parts = key.split(".")
        for part in parts[:-1]:
            if isinstance(node, list):
                try:
                    node = node[int(part)]
                except (ValueError, IndexError):
                    raise ConfigError(f"override {item!r}: no list item {part!r}") from None
                continue
            node = node.setdefault(part, {})
            if not isinstance(node, (dict, list)):
                raise ConfigError(f"override {item!r}: {part!r} is not a section")
        if isinstance(node, list):
            try:
                node[int(parts[-1])] = value
            except (ValueError, IndexError):
                raise ConfigError(f"override {item!r}: no list item {parts[-1]!r}") from None
        else:
            node[parts[-1]] = value
    return data
