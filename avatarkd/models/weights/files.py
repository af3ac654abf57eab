"""Reading a weights file in any common layout into a ``state_dict``.

A plain ``state_dict``; one wrapped under ``state_dict`` / ``model`` / ``module`` (or nested
wrappers); a whole pickled module (only with ``allow_pickle``: unpickling runs code); ``.safetensors``;
avatarkd's own checkpoints and exports. Every ``torch.load`` goes through ``avatarkd.loading``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from ...errors import CheckpointError
from ...loading import load_torch_file

# where a checkpoint keeps its state_dict, outermost first (nested wrappers are followed)
WRAPPERS = ("state_dict", "model", "module", "model_state_dict", "model_state", "net", "network", "weights")


def state_dict_of(obj: Any, source: str, depth: int = 0) -> dict[str, Tensor]:
    """The tensors of a loaded object: a module's ``state_dict``, a plain one, or one under ``WRAPPERS`` (nested)."""
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    if depth < 4:
        for key in WRAPPERS:
            if isinstance(obj.get(key), (Mapping, nn.Module)):
                return state_dict_of(obj[key], source, depth + 1)
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if tensors:
        return tensors
    raise CheckpointError(
        f"{source}: holds no model weights (expected a state_dict, or one under "
        f"{', '.join(repr(w) for w in WRAPPERS[:3])}; found keys {list(obj)[:5]})"
    )


def read_state_dict(path: str | Path, allow_pickle: bool = False, option: str | None = None) -> dict[str, Tensor]:
    """The tensors of a weights file in any common layout (see ``avatarkd.models.weights``).

    A file that needs unpickling (a whole pickled module) is refused in one line naming ``option``
    (``model.allow_pickle``/``teacher.allow_pickle``) unless ``allow_pickle``: unpickling runs code.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file  # a declared dependency; imported only for these files

        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file: {type(err).__name__}") from None
    return state_dict_of(load_torch_file(path, allow_pickle=allow_pickle, option=option), str(path))


__all__ = ["WRAPPERS", "read_state_dict", "state_dict_of"]
