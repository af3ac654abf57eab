"""Weights from anywhere, loaded so that a mismatch can never pass silently.

``model.weights`` (the whole model) and ``model.backbone_weights`` (the feature extractor only)
accept:

- a local file in any common layout: a plain ``state_dict``; one wrapped under ``state_dict`` /
  ``model`` / ``module`` (or nested wrappers); keys prefixed by ``module.`` (DDP) or ``model.``;
  a whole pickled module; ``.safetensors``; avatarkd's own checkpoints and exports;
- ``torchvision:<EnumClass>.<NAME>`` (e.g. ``torchvision:MobileNet_V2_Weights.IMAGENET1K_V1``),
  resolved with torchvision's weights API into the standard hub cache under ``TORCH_HOME``.
  Nothing is downloaded: when the file is not in the cache, one line names the file and the
  folder to place it in.

Keys are aligned by the prefix pair (dropped from the file, added for the model) that matches the
most tensors, so a ``module.backbone.body.`` file loads into a backbone and a classifier
checkpoint's ``features.`` loads into a ``features``-based extractor. Loading then either logs one
line (``loaded N tensors; missing: <groups>; unexpected: <groups>``) or fails with one line when
the architecture does not match: a shape mismatch, a model tensor with no counterpart (a whole
model must be complete; a backbone too), a file tensor inside a module the model has but with
no counterpart there (a deeper ResNet into a shallower one), or nothing matched. Whole file
modules the model does not have (a classifier's ``fc`` under a backbone, an ``aux_classifier``) are
reported as unexpected and left unused.
"""

from __future__ import annotations

import json
import logging
import os
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..naming import did_you_mean

log = logging.getLogger(__name__)

TORCHVISION_PREFIX = "torchvision:"
# where a checkpoint keeps its state_dict, outermost first (nested wrappers are followed)
WRAPPERS = ("state_dict", "model", "module", "model_state_dict", "model_state", "net", "network", "weights")
# a classifier's head: in backbone loads these may be absent, different or unused
HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear")
_SKIP_MISSING = ("num_batches_tracked",)


# ------------------------------------------------------------------ reading
def _unwrap(obj: Any, source: str, depth: int = 0) -> dict[str, Tensor]:
    if isinstance(obj, nn.Module):
        return dict(obj.state_dict())
    if not isinstance(obj, Mapping):
        raise CheckpointError(f"{source}: expected a state_dict (a dict of tensors), found {type(obj).__name__}")
    if obj and all(isinstance(v, Tensor) for v in obj.values()):
        return dict(obj)
    if depth < 4:
        for key in WRAPPERS:
            if isinstance(obj.get(key), (Mapping, nn.Module)):
                return _unwrap(obj[key], source, depth + 1)
    tensors = {k: v for k, v in obj.items() if isinstance(v, Tensor)}
    if tensors:
        return tensors
    raise CheckpointError(
        f"{source}: holds no model weights (expected a state_dict, or one under "
        f"{', '.join(repr(w) for w in WRAPPERS[:3])}; found keys {list(obj)[:5]})"
    )


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        pass
    try:
        # avatarkd checkpoints hold NumPy RNG states; other frameworks pickle whole modules
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:
        raise CheckpointError(
            f"{path}: not a readable checkpoint (truncated or corrupted?): {type(err).__name__}"
        ) from None


def read_state_dict(path: str | Path) -> dict[str, Tensor]:
    """The tensors of a weights file in any common layout (see the module docstring)."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        try:
            from safetensors.torch import load_file
        except ImportError:
            raise CheckpointError(
                f"{path}: reading .safetensors needs the safetensors package (pip install safetensors)"
            ) from None
        try:
            return dict(load_file(str(path), device="cpu"))
        except Exception as err:
            raise CheckpointError(f"{path}: not a readable safetensors file: {type(err).__name__}") from None
    return _unwrap(_torch_load(path), str(path))


def recorded_normalization(path: str | Path) -> Any:
    """What an avatarkd export recorded as its input normalisation (``student.json`` beside it), else "unknown"."""
    sidecar = Path(path).with_suffix(".json")
    if not sidecar.is_file():
        return "unknown"
    try:
        meta = json.loads(sidecar.read_text())
    except (OSError, ValueError):
        return "unknown"
    return meta.get("normalize", "unknown") if isinstance(meta, dict) else "unknown"


# ------------------------------------------------------------------ torchvision enums
def _all_enum_names() -> list[str]:
    import torchvision
    from torchvision.models import get_model_weights

    names = []
    for model in torchvision.models.list_models():
        enum = get_model_weights(model)
        names += [f"{enum.__name__}.{member}" for member in enum.__members__]
    return names


def torchvision_weights(name: str) -> Any:
    """The torchvision ``WeightsEnum`` member named ``EnumClass.NAME``; an unknown name suggests the closest."""
    from torchvision.models import get_weight

    try:
        if "." not in name:
            raise ValueError(name)
        return get_weight(name)
    except (ValueError, KeyError, AttributeError):
        hint = did_you_mean(name, _all_enum_names()) or (
            "; write torchvision:<EnumClass>.<NAME>, e.g. torchvision:ResNet18_Weights.IMAGENET1K_V1"
        )
        raise ConfigError(f"{TORCHVISION_PREFIX}{name}: unknown torchvision weights{hint}") from None


def torchvision_cache_file(weights: Any) -> Path:
    """Where torchvision's ``load_state_dict_from_url`` looks for ``weights`` (under ``TORCH_HOME``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)


def read_torchvision_weights(name: str) -> dict[str, Tensor]:
    """The state_dict of ``torchvision:<name>`` from the hub cache; never downloads."""
    weights = torchvision_weights(name)
    cached = torchvision_cache_file(weights)
    if not cached.is_file():
        raise CheckpointError(
            f"{TORCHVISION_PREFIX}{name}: weights file {cached.name} is not in {cached.parent}; "
            f"place it there (it is {weights.url}; avatarkd never downloads) or set TORCH_HOME"
        )
    try:
        return _unwrap(weights.get_state_dict(progress=False, check_hash=False), f"{TORCHVISION_PREFIX}{name}")
    except CheckpointError:
        raise
    except Exception as err:
        raise CheckpointError(
            f"{cached}: not a readable checkpoint (truncated or corrupted?): {type(err).__name__}"
        ) from None


def read_weights(source: str | Path) -> dict[str, Tensor]:
    """A local file or ``torchvision:<EnumClass>.<NAME>``."""
    text = str(source)
    if text.startswith(TORCHVISION_PREFIX):
        return read_torchvision_weights(text[len(TORCHVISION_PREFIX) :])
    return read_state_dict(text)


# ------------------------------------------------------------------ aligning and loading
def _splits(key: str, most: int) -> Iterable[tuple[str, str]]:
    """(prefix, rest) pairs of a key; the rest keeps a module name and a tensor name (``bn1.weight``),
    since a bare ``weight`` would match any module's."""
    parts = key.split(".")
    for i in range(min(most, len(parts) - 2) + 1 if len(parts) > 1 else 1):
        yield ".".join(parts[:i]) + ("." if i else ""), ".".join(parts[i:])


def _dotted(suffix: str) -> str:
    """timm's flattened names (``layer1_0.conv1``) spelt as the source model's (``layer1.0.conv1``)."""
    head, sep, rest = suffix.partition(".")
    return head.replace("_", ".") + sep + rest


def align(file_keys: Iterable[str], model_keys: Iterable[str]) -> tuple[dict[str, str], str, str]:
    """model key -> file key, by the (drop, add) prefix pair that matches the most model keys; and the pair."""
    file_keys, model_keys = list(file_keys), list(model_keys)
    by_suffix: dict[str, list[str]] = {}
    for key in file_keys:
        for prefix, suffix in _splits(key, 3):
            by_suffix.setdefault(suffix, []).append(prefix)
    votes: Counter[tuple[str, str]] = Counter()
    for key in model_keys:
        seen = set()
        for add, suffix in _splits(key, 2):
            for candidate in dict.fromkeys((suffix, _dotted(suffix))):
                for drop in by_suffix.get(candidate, ()):
                    if (drop, add) not in seen:
                        seen.add((drop, add))
                        votes[(drop, add)] += 1
    if not votes:
        return {}, "", ""
    best = max(votes.values())
    drop, add = min((pair for pair, n in votes.items() if n == best), key=lambda p: (len(p[0]) + len(p[1]), p))
    present = set(file_keys)
    mapping = {}
    for key in model_keys:
        if not key.startswith(add):
            continue
        suffix = key[len(add) :]
        for candidate in dict.fromkeys((suffix, _dotted(suffix))):
            if drop + candidate in present:
                mapping[key] = drop + candidate
                break
    return mapping, drop, add


def _groups(keys: Iterable[str], limit: int = 4) -> str:
    counts: Counter[str] = Counter(".".join(k.split(".")[:-1][:2]) or k for k in keys)
    if not counts:
        return "none"
    shown = [f"{g} ({n})" for g, n in list(counts.items())[:limit]]
    return ", ".join(shown) + (f", +{len(counts) - limit} more" if len(counts) > limit else "")


@dataclass
class LoadReport:
    """What a load did: tensors loaded, and the keys left out on either side."""

    loaded: int
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)

    def line(self) -> str:
        return f"loaded {self.loaded} tensors; missing: {_groups(self.missing)}; unexpected: {_groups(self.unexpected)}"


def _is_head(key: str) -> bool:
    return key.split(".")[0] in HEAD_NAMES


def load_into(
    target: nn.Module, state: Mapping[str, Tensor], source: str, role: str, head_optional: bool = False
) -> LoadReport:
    """Load ``state`` into ``target`` after aligning key prefixes; one-line CheckpointError on any mismatch.

    ``head_optional``: ``target`` is a whole classifier receiving backbone weights, so its head
    (``fc``/``classifier``/``head``) may be missing, different or unused.
    """
    own = target.state_dict()
    mapping, drop, add = align(state, own)
    if not mapping:
        file_eg = next(iter(state), "nothing")
        own_eg = next(iter(own), "nothing")
        raise CheckpointError(
            f"{source}: weights do not fit the {role} architecture: no tensor matches "
            f"(file keys look like {file_eg!r}, model keys like {own_eg!r})"
        )
    wrong = [k for k, f in mapping.items() if tuple(own[k].shape) != tuple(state[f].shape)]
    skipped_head = [k for k in wrong if head_optional and _is_head(k[len(add) :])]
    for k in skipped_head:  # a new head for another number of classes: keeps its initialisation
        del mapping[k]
    wrong = [k for k in wrong if k not in skipped_head]
    used = set(mapping.values())
    missing = [k for k in own if k not in mapping and not k.endswith(_SKIP_MISSING)]
    unexpected = [k for k in state if k not in used]
    # a file tensor inside a module the model has (layer1.2 of a ResNet-34 in a ResNet-18) is a
    # mismatch; whole modules the model lacks (a head, an aux classifier) are only unused
    own_tops = {
        p for k in own if k.startswith(add) for p in (k[len(add) :].split(".")[0], _dotted(k[len(add) :]).split(".")[0])
    }
    inside = [
        k
        for k in unexpected
        if k.startswith(drop)
        and k[len(drop) :].split(".")[0] in own_tops
        and not (head_optional and _is_head(k[len(drop) :]))
    ]
    missing_body = [k for k in missing if not (head_optional and _is_head(k[len(add) :]))]
    problems = []
    if wrong:
        k = wrong[0]
        problems.append(
            f"{len(wrong)} shape mismatches (e.g. {k}: file {tuple(state[mapping[k]].shape)} vs model "
            f"{tuple(own[k].shape)})"
        )
    if missing_body:
        problems.append(f"{len(missing_body)} model tensors not in the file ({_groups(missing_body)})")
    if inside:
        problems.append(f"{len(inside)} file tensors with no place in the model ({_groups(inside)})")
    if problems:
        raise CheckpointError(f"{source}: weights do not fit the {role} architecture: {'; '.join(problems)}")
    target.load_state_dict({k: state[f] for k, f in mapping.items()}, strict=False)
    return LoadReport(len(mapping), missing, unexpected)


def backbone_target(model: nn.Module, module: str | None = None) -> tuple[nn.Module, bool]:
    """The module ``backbone_weights`` load into, and whether a classifier head there is optional.

    ``module`` (``model.backbone_module``) names it; else ``backbone.body`` (detectors, LR-ASPP,
    torchvision detection models), else ``backbone`` (FCN/DeepLabV3), else ``encoder``
    (segmentation_models_pytorch), else the model itself as a classifier whose head stays as built.
    """
    if module is not None:
        modules = dict(model.named_modules())
        if module not in modules:
            raise ConfigError(
                f"model.backbone_module {module!r}: the model has no such module{did_you_mean(module, modules, n=3)}"
            )
        return modules[module], False
    backbone = getattr(model, "backbone", None)
    if isinstance(backbone, nn.Module):
        body = getattr(backbone, "body", None)
        return (body if isinstance(body, nn.Module) else backbone), False
    encoder = getattr(model, "encoder", None)
    if isinstance(encoder, nn.Module):
        return encoder, False
    return model, True


def load_weights(
    model: nn.Module, source: str | Path, role: str, backbone_only: bool = False, backbone_module: str | None = None
) -> LoadReport:
    """Read ``source`` (file or torchvision enum) and load it into the model or its feature extractor; logs one line."""
    state = read_weights(source)
    if backbone_only:
        target, head_optional = backbone_target(model, backbone_module)
        what = f"{role} backbone"
    else:
        target, head_optional, what = model, False, role
    report = load_into(target, state, str(source), what, head_optional=head_optional)
    log.info("%s weights %s: %s", what, source, report.line())
    return report


def load_configured_weights(model: nn.Module, mcfg: Any, role: str) -> Any:
    """``model.weights`` / ``model.backbone_weights`` of a config into ``model``; returns what the weights
    recorded about input normalisation (``"unknown"`` unless an avatarkd export says).

    Whole-model weights make backbone weights redundant (they would be overwritten): those are
    then not read, so ``avatarkd eval --weights`` needs no backbone file.
    """
    recorded: Any = "unknown"
    if mcfg.weights is not None:
        load_weights(model, mcfg.weights, role)
        if not str(mcfg.weights).startswith(TORCHVISION_PREFIX):
            recorded = recorded_normalization(mcfg.weights)
        if mcfg.backbone_weights is not None:
            log.info("%s: backbone_weights not read: model.weights holds the whole model", role)
    elif mcfg.backbone_weights is not None:
        load_weights(model, mcfg.backbone_weights, role, backbone_only=True, backbone_module=mcfg.backbone_module)
    return recorded


__all__ = [
    "HEAD_NAMES",
    "LoadReport",
    "TORCHVISION_PREFIX",
    "align",
    "backbone_target",
    "load_configured_weights",
    "load_into",
    "load_weights",
    "read_state_dict",
    "read_torchvision_weights",
    "read_weights",
    "recorded_normalization",
    "torchvision_cache_file",
    "torchvision_weights",
]
