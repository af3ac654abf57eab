"""Loading aligned tensors into a model so that a mismatch can never pass silently.

Loading either reports one line (``loaded N tensors; missing: <groups>; unexpected: <groups>``) or
fails with one line when the architecture does not match: a shape mismatch, a model tensor with no
counterpart (a whole model must be complete; a backbone too), a file tensor inside a module the
model has but with no counterpart there (a deeper ResNet into a shallower one), or nothing
matched. Whole file modules the model does not have (a classifier's ``fc`` under a backbone, an
``aux_classifier``) are reported as unexpected and left unused.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from torch import Tensor, nn

from ...errors import CheckpointError, ConfigError
from ...naming import did_you_mean
from .alignment import align, dotted

# a classifier's head: in backbone loads these may be absent, different or unused
HEAD_NAMES = ("fc", "classifier", "head", "heads", "last_linear")
_SKIP_MISSING = ("num_batches_tracked",)


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
        p for k in own if k.startswith(add) for p in (k[len(add) :].split(".")[0], dotted(k[len(add) :]).split(".")[0])
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


__all__ = ["HEAD_NAMES", "LoadReport", "backbone_target", "load_into"]
