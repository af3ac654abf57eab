"""Name -> implementation tables that config checks, builders and docs all read.

A registry replaces lists kept in sync by hand: a loss is declared once, with
``@register_loss`` beside its formula, together with what it needs to be built and called
(the teacher's channel count, a random generator, per-batch context such as the labels). The
config check (``avatarkd.config``), the point builder (``avatarkd.distiller``) and the docs all
derive from that one declaration, and a loss registered in user code is usable from YAML.

This module sits at the bottom of the package so that the config schema can validate names
against the registry without importing the losses themselves.
"""

from __future__ import annotations

import functools
import inspect
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from .errors import AvatarKDDeprecationWarning, ConfigError
from .naming import did_you_mean

T = TypeVar("T")


class Registry(Generic[T]):
    """A named table of one kind of thing (``kind`` names it in error messages)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def add(self, name: str, item: T, *, replace: bool = False) -> T:
        if not replace and name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered (pass replace=True to override it)")
        self._items[name] = item
        return item

    def get(self, name: str) -> T:
        try:
            return self._items[name]
        except KeyError:
            raise ConfigError(
                f"unknown {self.kind} {name!r}{did_you_mean(name, self._items)}; choose one of {', '.join(self._items)}"
            ) from None

    def names(self) -> list[str]:
        return list(self._items)

    def __contains__(self, name: object) -> bool:
        return name in self._items

    def __iter__(self) -> Iterator[str]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)


# ----------------------------------------------------------------------------- signatures
def _signature(fn: Callable[..., Any]) -> inspect.Signature | None:
    """The signature that takes the hyperparameters: a class's constructor, a module's forward."""
    obj: Any = fn  # a class or a module: their hyperparameters sit on __init__ / forward
    if isinstance(fn, type):
        target = obj.__init__
    elif not inspect.isfunction(fn) and callable(getattr(fn, "forward", None)):
        target = obj.forward
    else:
        target = fn
    try:
        return inspect.signature(target)
    except (TypeError, ValueError):  # builtins without a signature: nothing to check
        return None


def accepted_kwargs(fn: Callable[..., Any], skip: int) -> list[str] | None:
    """Keyword hyperparameters of ``fn`` after its first ``skip`` parameters; None if it takes ``**kw``."""
    sig = _signature(fn)
    if sig is None:
        return None
    params = [p for p in sig.parameters.values() if p.name != "self"]
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    return [p.name for p in params[skip:] if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)]


def check_kwargs(fn: Callable[..., Any], kwargs: Mapping[str, Any], what: str) -> dict[str, Any]:
    """Fail at construction, not mid-training, when hyperparameters do not fit ``fn(student, teacher, ...)``.

    Returns the hyperparameters to call ``fn`` with (a registered loss's deprecated names mapped).
    """
    spec = getattr(fn, "loss_spec", None)
    if isinstance(spec, LossSpec) and not isinstance(fn, type):
        return spec.normalise_kwargs(kwargs, what)
    accepted = accepted_kwargs(fn, 2)
    if accepted is not None:
        for key in kwargs:
            if key not in accepted:
                hint = f"; accepted: {', '.join(accepted)}" if accepted else "; it takes none"
                raise ConfigError(f"{what} got an unknown hyperparameter {key!r}{hint}")
    return dict(kwargs)


# ----------------------------------------------------------------------------- losses
@dataclass(frozen=True)
class LossSpec:
    """What building and calling one registered loss takes.

    Attributes:
        name: the name configs use (``loss: cwd``).
        fn: a function ``(student, teacher, *context, **hyperparameters) -> scalar``, or an
            ``nn.Module`` class with learnable parts (built per distillation level).
        channels: ``fn`` is a class whose constructor takes the teacher's channel count first.
        generator: the constructor takes ``generator=`` (reproducible random masks).
        context: per-batch inputs the task must hand over (e.g. ``("target",)`` for the labels);
            they reach the loss through ``Distiller.forward(..., loss_context=...)``.
        renamed: deprecated hyperparameter names still accepted, mapped to the current ones.
        label: the constructor takes ``label=``, the distillation level it is built for
            (``point[.level]``), e.g. to read that level's learnt parts from a file.
    """

    name: str
    fn: Callable[..., Any]
    channels: bool = False
    generator: bool = False
    context: tuple[str, ...] = ()
    renamed: Mapping[str, str] = field(default_factory=dict)
    label: bool = False

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.fn) or ""
        return doc.split("\n\n")[0].replace("\n", " ")

    def hyperparameters(self) -> list[str]:
        """Names accepted in ``loss_kwargs`` (context and construction arguments excluded)."""
        skip = 1 if self.channels else 2
        names = accepted_kwargs(self.fn, skip) or []
        return [
            n
            for n in names
            if n not in self.context and not (self.generator and n == "generator") and not (self.label and n == "label")
        ]

    def defaults(self) -> dict[str, Any]:
        sig = _signature(self.fn)
        if sig is None:
            return {}
        return {
            n: p.default
            for n, p in sig.parameters.items()
            if n in self.hyperparameters() and p.default is not inspect.Parameter.empty
        }

    def normalise_kwargs(self, kwargs: Mapping[str, Any], what: str | None = None) -> dict[str, Any]:
        """``kwargs`` with deprecated names mapped (and warned about); unknown names are a ConfigError."""
        what = what or f"loss {self.name!r}"
        accepted = self.hyperparameters()
        out: dict[str, Any] = {}
        for key, value in kwargs.items():
            if key in self.renamed:
                new = self.renamed[key]
                warnings.warn(
                    f"{what}: hyperparameter {key!r} is deprecated, use {new!r}",
                    AvatarKDDeprecationWarning,
                    stacklevel=3,
                )
                if new in kwargs:
                    raise ConfigError(f"{what}: give {new!r} or its old name {key!r}, not both")
                key = new
            if key in self.context:
                raise ConfigError(
                    f"{what}: {key!r} comes from each batch (the task hands it over), it is not a hyperparameter"
                )
            if key not in accepted:
                hint = f"; accepted: {', '.join(accepted)}" if accepted else "; it takes none"
                raise ConfigError(f"{what} got an unknown hyperparameter {key!r}{did_you_mean(key, accepted)}{hint}")
            out[key] = value
        return out

    def build(
        self, kwargs: Mapping[str, Any], channels: int | None = None, generator: Any = None, label: str = ""
    ) -> Any:
        """The loss for one level: the function itself, or a fresh module for ``channels`` (and level ``label``)."""
        if not self.channels:
            return self.fn
        if channels is None:
            raise ValueError(f"loss {self.name!r} is built per level from the teacher's channel count")
        extra: dict[str, Any] = {"generator": generator} if self.generator else {}
        if self.label:
            extra["label"] = label
        return self.fn(channels, **self.normalise_kwargs(kwargs), **extra)


LOSSES: Registry[LossSpec] = Registry("loss")


def register_loss(
    name: str | None = None,
    *,
    channels: bool = False,
    generator: bool = False,
    context: tuple[str, ...] = (),
    renamed: Mapping[str, str] | None = None,
    replace: bool = False,
    label: bool = False,
) -> Callable[[Any], Any]:
    """Declare a loss under ``name`` (default: the function's or class's name, lower-cased).

    Use it beside the formula::

        @register_loss("my_l2")
        def my_l2(student, teacher, scale: float = 1.0): ...

    A registered function gets ``context_keys`` and ``loss_spec`` attributes so that
    ``AvatarLoss`` and the ``Distiller`` know what to pass it; deprecated hyperparameter names in
    ``renamed`` keep working, with a warning, in YAML and in direct calls. ``label=True``: a
    ``channels`` class whose constructor takes ``label=``, the level it is built for.
    """

    def decorate(fn: Any) -> Any:
        name_ = name or fn.__name__.lower()
        renames = dict(renamed or {})
        target = fn
        if renames and not isinstance(fn, type):
            target = functools.wraps(fn)(_renaming(fn, renames, name_))
        spec = LossSpec(
            name_,
            target,
            channels=channels,
            generator=generator,
            context=tuple(context),
            renamed=renames,
            label=label,
        )
        target.context_keys = spec.context
        target.loss_spec = spec
        LOSSES.add(name_, spec, replace=replace)
        return target

    return decorate


def _renaming(fn: Callable[..., Any], renames: Mapping[str, str], label: str) -> Callable[..., Any]:
    def call(*args: Any, **kwargs: Any) -> Any:
        for old, new in renames.items():
            if old in kwargs:
                warnings.warn(
                    f"loss {label!r}: hyperparameter {old!r} is deprecated, use {new!r}",
                    AvatarKDDeprecationWarning,
                    stacklevel=2,
                )
                kwargs[new] = kwargs.pop(old)
        return fn(*args, **kwargs)

    return call


# ----------------------------------------------------------------------------- avatars and uncertainty
# Filled by ``avatarkd.avatars`` (``register_perturbation``) and ``avatarkd.uncertainty``
# (``register_uncertainty``) with one class per kind; kept here so that the config schema can check
# the names users write (``perturbation: dropout``, ``uncertainty: relative``) without importing them.
PERTURBATIONS: Registry[Any] = Registry("perturbation")
UNCERTAINTY_MODES: Registry[Any] = Registry("uncertainty mode")


def _register_class(table: Registry[Any], name: str, replace: bool) -> Callable[[type[T]], type[T]]:
    def decorate(cls: type[T]) -> type[T]:
        cls.name = name  # type: ignore[attr-defined]
        table.add(name, cls, replace=replace)
        return cls

    return decorate


def register_perturbation(name: str, *, replace: bool = False) -> Callable[[type[T]], type[T]]:
    """Declare a ``avatars.PerturbationKind`` subclass under the name configs use (``perturbation: name``)."""
    return _register_class(PERTURBATIONS, name, replace)


def register_uncertainty(name: str, *, replace: bool = False) -> Callable[[type[T]], type[T]]:
    """Declare a ``uncertainty.UncertaintyKind`` subclass under the name configs use (``uncertainty: name``)."""
    return _register_class(UNCERTAINTY_MODES, name, replace)


def loss_table(names: list[str] | None = None) -> str:
    """The registered losses as a Markdown table (what README/docs show; a test keeps them equal)."""
    lines = ["| loss | hyperparameters (default) | needs | what |", "|---|---|---|---|"]
    for name in names or LOSSES.names():
        spec = LOSSES.get(name)
        params = ", ".join(f"`{k}` ({v!r})" for k, v in spec.defaults().items()) or "-"
        needs = [*(f"the batch's `{c}`" for c in spec.context), *(["channels (learnable)"] if spec.channels else [])]
        what = spec.summary.replace("``", "`").replace("|", "\\|")
        lines.append(f"| `{name}` | {params} | {', '.join(needs) or '-'} | {what} |")
    return "\n".join(lines)
