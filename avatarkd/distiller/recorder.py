"""Forward-hook recorders: they watch named modules but record only inside ``recording()``.

Keeping recording separate from the losses lets the same model run normally (inference,
export) with the hooks installed and no memory held.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import nn

from ..errors import DistillationError
from ..naming import did_you_mean


def resolve_module(model: nn.Module, path: str, role: str) -> nn.Module:
    """``model.get_submodule(path)`` with a readable error that suggests the closest names."""
    modules = dict(model.named_modules())
    if path in modules:
        return modules[path]
    raise DistillationError(f"{role} has no module named {path!r}{did_you_mean(path, modules, n=3)}")


class Recorder:
    """Records the outputs of ``paths`` in ``model`` while a ``recording()`` context is open."""

    def __init__(self, model: nn.Module, paths: Sequence[str], role: str) -> None:
        self.role = role
        self.outputs: dict[str, Any] = {}
        self._active = False
        self._handles = []
        for path in dict.fromkeys(paths):
            module = resolve_module(model, path, role)
            self._handles.append(module.register_forward_hook(self._hook(path)))

    def _hook(self, path: str):
        def hook(_module: nn.Module, _inputs: Any, output: Any) -> None:
            if self._active:
                # A module called twice in one forward keeps its last output.
                self.outputs[path] = output

        return hook

    @contextmanager
    def recording(self) -> Iterator[dict[str, Any]]:
        self.outputs = {}
        self._active = True
        try:
            yield self.outputs
        finally:
            self._active = False

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
