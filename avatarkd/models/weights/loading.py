"""A model's configured weights, read from wherever they are and loaded into it (or its backbone)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from .files import read_state_dict
from .fitting import LoadReport, backbone_target, load_into
from .hub import TORCHVISION_PREFIX, read_torchvision_weights

log = logging.getLogger(__name__)


def read_weights(source: str | Path, allow_pickle: bool = False, option: str | None = None) -> dict[str, Tensor]:
    """A local file or ``torchvision:<EnumClass>.<NAME>``; ``allow_pickle``/``option`` as in ``read_state_dict``."""
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        return read_torchvision_weights(text[len(TORCHVISION_PREFIX) :])
    return read_state_dict(text, allow_pickle=allow_pickle, option=option)


def load_weights(
    model: nn.Module,
    source: str | Path,
    role: str,
    backbone_only: bool = False,
    allow_pickle: bool = False,
    option: str | None = None,
    backbone_module: str | None = None,
) -> LoadReport:
    """Read ``source`` (file or torchvision enum) and load it into the model or its feature extractor; logs one line.

    ``allow_pickle``: the user trusts this file to be unpickled (``option`` names that setting in errors).
    """
    state = read_weights(source, allow_pickle=allow_pickle, option=option)
    if backbone_only:
        target, head_optional = backbone_target(model, backbone_module)
        what = f"{role} backbone"
    else:
        target, head_optional, what = model, False, role
    report = load_into(target, state, str(source), what, head_optional=head_optional)
    log.info("%s weights %s: %s", what, source, report.line())
    return report


def load_configured_weights(model: nn.Module, mcfg: Any, role: str, section: str | None = None) -> None:
    """``model.weights`` / ``model.backbone_weights`` of a config into ``model`` (what an export recorded
    about input normalisation is ``exports.exported_normalization``'s job).

    Whole-model weights make backbone weights redundant (they would be overwritten): those are
    then not read, so ``avatarkd eval --weights`` needs no backbone file. ``section``: the config
    section ``mcfg`` came from (default ``teacher`` for the teacher, else ``model``), named when a
    file needs ``<section>.allow_pickle``.
    """
    section = section or ("teacher" if role == "teacher" else "model")
    trusted, option = bool(getattr(mcfg, "allow_pickle", False)), f"{section}.allow_pickle"
    if mcfg.weights is not None:
        load_weights(model, mcfg.weights, role, allow_pickle=trusted, option=option)
        if mcfg.backbone_weights is not None:
            log.info("%s: backbone_weights not read: model.weights holds the whole model", role)
    elif mcfg.backbone_weights is not None:
        load_weights(
            model,
            mcfg.backbone_weights,
            role,
            backbone_only=True,
            allow_pickle=trusted,
            option=option,
            backbone_module=getattr(mcfg, "backbone_module", None),
        )


__all__ = ["load_configured_weights", "load_weights", "read_weights"]
