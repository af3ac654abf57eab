"""Distiller: AKD between any two ``nn.Module``s, with distillation points named by module path.

The teacher runs frozen, in eval mode and under ``torch.no_grad``; forward hooks record the named
modules' outputs; connectors (built from the recorded shapes) align the student's; one loss per
point and per output level (e.g. per FPN level) compares them.
"""

from __future__ import annotations

import copy
import inspect
import logging
import math
import re
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import DistillationError
from ..naming import repeated
from .connectors import Connector
from .recorder import Recorder
from .teacher_cache import TeacherCache

log = logging.getLogger(__name__)

LossLike = Callable[..., Tensor]
TeacherForward = Callable[..., Any]
OutputKey = str | int | Sequence[str | int]


@dataclass
class DistillPoint:
    """One pair of modules whose outputs are compared.

    Args:
        name: label of the point in the loss dict (``distill.<name>[.<level>]``).
        student, teacher: module paths, e.g. ``"backbone.layer4"`` or ``"backbone.fpn"``.
        loss: ``f(student, teacher) -> scalar`` (e.g. an ``AvatarLoss``); deep-copied per output
            level so that each level has its own state (uncertainty estimate, generator).
        loss_factory: alternatively, ``channels -> loss``, for losses whose parameters depend on
            the teacher's channel count (MGD, MasKD); called once per level at ``build``, with
            ``label=`` (``point[.level]``) too when it takes that parameter.
        weight: multiplies the point's loss.
        key: picks one item of both outputs (e.g. ``"out"`` of a torchvision segmentation
            model); without it every item is a level of its own. An item is a dict key, an
            attribute (a Hugging Face ``ModelOutput``'s ``hidden_states``) or a list index; a list
            of them is a path into nested outputs (``["hidden_states", 3]``).
        student_key, teacher_key: the same, per side (``key`` is the shorthand for both); for
            pairs whose modules return different containers.
        connector_bn: add a BatchNorm after a 1x1 conv connector.
    """

    name: str
    student: str
    teacher: str
    loss: LossLike | None = None
    loss_factory: Callable[[int], LossLike] | None = None
    weight: float = 1.0
    key: OutputKey | None = None
    connector_bn: bool = False
    student_key: OutputKey | None = None
    teacher_key: OutputKey | None = None

    def __post_init__(self) -> None:
        if (self.loss is None) == (self.loss_factory is None):
            raise DistillationError(f"point {self.name!r}: give exactly one of loss= or loss_factory=")
        if self.key is not None:
            if self.student_key is not None or self.teacher_key is not None:
                raise DistillationError(
                    f"point {self.name!r}: give key= (both sides) or student_key=/teacher_key=, not both"
                )
            self.student_key = self.teacher_key = self.key
        if not (isinstance(self.weight, (int, float)) and math.isfinite(self.weight) and self.weight >= 0):
            raise DistillationError(f"point {self.name!r}: weight must be a finite number >= 0, got {self.weight!r}")


def _default_teacher_forward(teacher: nn.Module, *args: Any) -> Any:
    return teacher(*args)


def _slot(text: str) -> str:
    """A ModuleDict key (no dots) for a point/level label."""
    return re.sub(r"[^0-9A-Za-z_]", "_", text)


def _describe(obj: Any) -> str:
    if isinstance(obj, Tensor):
        return f"a tensor of shape {tuple(obj.shape)}"
    if isinstance(obj, Mapping):
        return f"a {type(obj).__name__} with keys {list(map(str, obj))[:8]}"
    if isinstance(obj, (list, tuple)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    return f"a {type(obj).__name__}"


def select(output: Any, key: OutputKey | None) -> Any:
    """The item ``key`` names in a module's output; raises KeyError naming the step that failed.

    A step is a dict key, an attribute (a Hugging Face ``ModelOutput`` holds only its non-None
    fields as items, but every field as an attribute) or a list/tuple index; a list of steps is a
    path into nested outputs.
    """
    if key is None:
        return output
    for step in [key] if isinstance(key, (str, int)) else list(key):
        if isinstance(output, Mapping) and step in output:
            output = output[step]
        elif isinstance(output, (list, tuple)) and isinstance(step, int) and -len(output) <= step < len(output):
            output = output[step]
        elif isinstance(step, str) and not isinstance(output, Tensor) and getattr(output, step, None) is not None:
            output = getattr(output, step)
        else:
            raise KeyError(f"has no item {step!r} (it is {_describe(output)})")
    return output


def _level_label(point: DistillPoint, level: str) -> str:
    """``point`` or ``point.level``: one level's name in the loss dict, the cache, connectors and loss modules."""
    return f"{point.name}.{level}" if level else point.name


def _recorded_levels(recorded: Mapping[str, Any], point: DistillPoint, role: str) -> dict[str, Tensor]:
    """The point's levels in what one side's recorder saw; its module must have run."""
    path = point.student if role == "student" else point.teacher
    if path not in recorded:
        raise DistillationError(f"point {point.name!r}: {role} module {path!r} did not run during the forward pass")
    return _levels(recorded[path], point, role)


def _call_factory(factory: Callable[..., LossLike], channels: int, label: str) -> LossLike:
    """``factory(channels, label)`` when it takes the level's label (``point[.level]``), else ``factory(channels)``."""
    try:
        params = inspect.signature(factory).parameters
    except (TypeError, ValueError):
        return factory(channels)
    return factory(channels, label) if "label" in params else factory(channels)


def _levels(output: Any, point: DistillPoint, role: str) -> dict[str, Tensor]:
    key = point.student_key if role == "student" else point.teacher_key
    try:
        output = select(output, key)
    except KeyError as err:
        raise DistillationError(
            f"point {point.name!r}: {role} output of {getattr(point, role)!r} {err.args[0]}; set {role}_key"
        ) from None
    if isinstance(output, Tensor):
        return {"": output}
    if isinstance(output, Mapping):
        items = {str(k): v for k, v in output.items()}
    elif isinstance(output, (list, tuple)):
        items = {str(i): v for i, v in enumerate(output)}
    else:
        raise DistillationError(
            f"point {point.name!r}: {role} output is a {type(output).__name__}, not a tensor, dict or tuple"
        )
    bad = [k for k, v in items.items() if not isinstance(v, Tensor)]
    if bad:
        raise DistillationError(f"point {point.name!r}: {role} output items {bad} are not tensors; set {role}_key")
    return items


class Distiller(nn.Module):
    """Distils ``teacher`` into ``student`` at ``points``.

    Typical use::

        distiller = Distiller(student, teacher, points)
        distiller.build(example_images)              # creates connectors/loss modules
        optim = SGD(distiller.trainable_parameters(), ...)
        out, losses = distiller(images)              # losses["distill_total"], per point
        (task_loss(out) + losses["distill_total"]).backward()

    Args:
        teacher_forward: ``f(teacher, *teacher_args)``; the default calls the teacher. Give a
            cheaper one (e.g. only the backbone) when the points do not need the full forward.
        check_finite: raise, naming the point, when a recorded feature holds NaN/Inf (a host
            sync per forward). ``"defer"``: only record it on the device, for
            ``nonfinite_features()`` to report later (what the Trainer uses: it checks the loss
            every few steps, not every step).
        teacher_cache: read the teacher's features from disk when it has seen the same input
            before (see ``TeacherCache``); the teacher then does not run for that batch.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        points: Sequence[DistillPoint],
        teacher_forward: TeacherForward | None = None,
        check_finite: bool | str = True,
        teacher_cache: TeacherCache | None = None,
    ) -> None:
        super().__init__()
        if not points:
            raise DistillationError("Distiller needs at least one distillation point")
        dupes = repeated(p.name for p in points)
        if dupes:
            raise DistillationError(f"distillation point names must be unique; repeated: {dupes}")
        self.student = student
        self.teacher = teacher.eval().requires_grad_(False)
        self.points = list(points)
        self.teacher_forward = teacher_forward or _default_teacher_forward
        if check_finite not in (True, False, "defer"):
            raise DistillationError(f"check_finite must be True, False or 'defer', got {check_finite!r}")
        self.check_finite = check_finite
        self._nonfinite: dict[str, Tensor] = {}  # label -> device flag, while deferring
        self.teacher_cache = teacher_cache
        self._student_rec = Recorder(student, [p.student for p in points], "student")
        self._teacher_rec = Recorder(teacher, [p.teacher for p in points], "teacher")
        self.connectors = nn.ModuleDict()
        self.loss_modules = nn.ModuleDict()
        self._loss_fns: dict[str, LossLike] = {}
        self._levels: dict[str, list[str]] = {}  # the levels each point distils
        self._all_levels: dict[str, list[str]] = {}  # every level its modules return (incl. dropped ones)
        self.built = False

    # ------------------------------------------------------------------ modes and parameters
    def train(self, mode: bool = True) -> Distiller:
        super().train(mode)
        self.teacher.eval()
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """Student, connectors and loss parameters: what the optimizer should get (after build)."""
        self._require_built()
        return [p for name, p in self.named_parameters() if not name.startswith("teacher.") and p.requires_grad]

    def distill_state_dict(self) -> dict[str, Tensor]:
        """Everything but the teacher (student, connectors, loss modules and their buffers)."""
        return {k: v for k, v in self.state_dict().items() if not k.startswith("teacher.")}

    def load_distill_state_dict(self, state: Mapping[str, Tensor]) -> None:
        missing, unexpected = self.load_state_dict(state, strict=False)
        missing = [k for k in missing if not k.startswith("teacher.")]
        if missing or unexpected:
            raise DistillationError(
                f"state does not match this distiller: missing {missing[:5]}, unexpected {unexpected[:5]}"
            )

    def _require_built(self) -> None:
        if not self.built:
            raise DistillationError(
                "Distiller is not built: call distiller.build(example_inputs) before training "
                "(it creates the connectors and loss modules the optimizer must see)"
            )

    # ------------------------------------------------------------------ running the models
    def _run_teacher(self, teacher_args: Sequence[Any]) -> dict[str, Any]:
        if self.teacher.training:
            raise DistillationError(
                "the teacher is in train mode; the Distiller keeps it frozen in eval mode (do not call teacher.train())"
            )
        with self._teacher_rec.recording() as rec, torch.no_grad():
            self.teacher_forward(self.teacher, *teacher_args)
        return rec

    @torch.no_grad()
    def build(self, *args: Any, teacher_args: Sequence[Any] | None = None, **kwargs: Any) -> Distiller:
        """Run both models once on example inputs and create connectors and loss modules."""
        was_training = self.student.training
        self.student.eval()
        try:
            t_rec = self._run_teacher(args if teacher_args is None else teacher_args)
            # with gradients, to see which student levels carry one (an smp encoder's level 0 is the image)
            with self._student_rec.recording() as s_rec, torch.enable_grad():
                self.student(*args, **kwargs)
        finally:
            self.student.train(was_training)
        device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
        for point in self.points:
            s_levels, t_levels = self._point_levels(point, s_rec, t_rec)
            self._all_levels[point.name] = list(t_levels)
            t_levels = self._drop_gradient_free(point, s_levels, t_levels)
            self._levels[point.name] = list(t_levels)
            for level, t_feat in t_levels.items():
                label = _level_label(point, level)
                s_feat = s_levels[level]
                if s_feat.shape[0] != t_feat.shape[0]:
                    raise DistillationError(
                        f"point {label!r}: batch sizes differ (student {s_feat.shape[0]}, teacher {t_feat.shape[0]})"
                    )
                conn = Connector(tuple(s_feat.shape), tuple(t_feat.shape), label, point.connector_bn)
                if not conn.is_identity:
                    self.connectors[_slot(label)] = conn.to(device)
                loss = (
                    _call_factory(point.loss_factory, t_feat.shape[1], label)
                    if point.loss_factory
                    else copy.deepcopy(point.loss)
                )
                if isinstance(loss, nn.Module):
                    self.loss_modules[_slot(label)] = loss.to(device)
                else:
                    self._loss_fns[_slot(label)] = loss  # type: ignore[assignment]
                log.info(
                    "point %s: student %s -> teacher %s%s",
                    label,
                    tuple(s_feat.shape),
                    tuple(t_feat.shape),
                    "" if conn.is_identity else " via connector",
                )
        self.built = True
        return self

    @staticmethod
    def _drop_gradient_free(
        point: DistillPoint, s_levels: dict[str, Tensor], t_levels: dict[str, Tensor]
    ) -> dict[str, Tensor]:
        """The teacher levels whose student feature carries a gradient; the others are dropped with a warning.

        A level without a gradient (an smp encoder's first "feature" is the input image itself)
        would compare two fixed tensors: compute spent, nothing learnt, and a misleading loss curve.
        """
        dropped = [level for level in t_levels if not s_levels[level].requires_grad]
        if not dropped:
            return t_levels
        labels = [_level_label(point, level) for level in dropped]
        if len(dropped) == len(t_levels):
            raise DistillationError(
                f"point {point.name!r}: the student's {point.student!r} output carries no gradient "
                "(a frozen module, or its input passed through); distil a module that trains"
            )
        message = (
            f"point {point.name!r}: dropped levels {labels}: the student's feature there carries no gradient "
            "(e.g. the input image, which an smp encoder returns as its first level)"
        )
        log.warning(message)
        warnings.warn(message, UserWarning, stacklevel=3)
        return {level: feat for level, feat in t_levels.items() if level not in dropped}

    def _point_levels(
        self, point: DistillPoint, s_rec: dict, t_rec: dict
    ) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        s_levels = _recorded_levels(s_rec, point, "student")
        t_levels = _recorded_levels(t_rec, point, "teacher")
        if list(s_levels) != list(t_levels):
            raise DistillationError(
                f"point {point.name!r}: student levels {list(s_levels)} do not match teacher levels "
                f"{list(t_levels)}; pick matching items with student_key / teacher_key"
            )
        return s_levels, t_levels

    def forward(
        self,
        *args: Any,
        teacher_args: Sequence[Any] | None = None,
        loss_context: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, Tensor]]:
        """Teacher (no grad) then student on the inputs; returns (student output, losses).

        ``teacher_args`` replaces ``args`` for the teacher (e.g. images without targets);
        ``kwargs`` go to the student only. ``loss_context`` holds per-batch inputs that some
        losses need, e.g. ``{"target": labels}`` for DKD; each loss receives only the keys it
        declares (``context_keys``). Losses are keyed ``distill.<point>[.<level>]``, plus
        ``distill_total``, and are already multiplied by their weights.
        """
        self._require_built()
        t_feats = self._teacher_feats(args if teacher_args is None else teacher_args)
        with self._student_rec.recording() as s_rec:
            out = self.student(*args, **kwargs)
        return out, self._losses(s_rec, t_feats, loss_context or {})

    def _labels(self) -> list[tuple[str, DistillPoint, str]]:
        return [(_level_label(p, level), p, level) for p in self.points for level in self._levels[p.name]]

    def _levels_as_built(self, recorded: Mapping[str, Any], point: DistillPoint, role: str) -> dict[str, Tensor]:
        """The point's levels this step; they must be the ones ``build`` saw (a model's output cannot change shape)."""
        levels = _recorded_levels(recorded, point, role)
        if list(levels) != self._all_levels[point.name]:
            raise DistillationError(
                f"point {point.name!r}: {role} levels {list(levels)} differ from those at build "
                f"{self._all_levels[point.name]}"
            )
        return levels

    def _teacher_levels(self, t_rec: Mapping[str, Any]) -> dict[str, Tensor]:
        """Label -> teacher tensor, from the recorded teacher outputs."""
        feats: dict[str, Tensor] = {}
        for point in self.points:
            levels = self._levels_as_built(t_rec, point, "teacher")
            for level in self._levels[point.name]:
                feats[_level_label(point, level)] = levels[level]
        return feats

    def _teacher_feats(self, teacher_args: Sequence[Any]) -> dict[str, Tensor]:
        """Teacher features for a batch: from the cache when every sample is in it, else by running it."""
        cache = self.teacher_cache
        keys = cache.sample_keys(teacher_args) if cache is not None else None
        if keys is not None:
            device = next((p.device for p in self.student.parameters()), torch.device("cpu"))
            found = cache.load(keys, [label for label, _, _ in self._labels()], device)  # type: ignore[union-attr]
            if found is not None:
                return found
        feats = self._teacher_levels(self._run_teacher(teacher_args))
        if keys is not None:
            cache.store(keys, feats)  # type: ignore[union-attr]
        return feats

    def point_losses(self) -> dict[str, LossLike]:
        """Label (``point[.level]``) -> the loss (module or function) built for it."""
        self._require_built()
        return {
            label: self.loss_modules[_slot(label)]
            if _slot(label) in self.loss_modules
            else self._loss_fns[_slot(label)]
            for label, _, _ in self._labels()
        }

    @torch.no_grad()
    def teacher_features(self, *teacher_args: Any) -> dict[str, Tensor]:
        """Label -> the teacher tensor each point compares against, for one batch (for pictures)."""
        self._require_built()
        return self._teacher_levels(self._run_teacher(teacher_args))

    def _losses(
        self, s_rec: Mapping[str, Any], t_feats: Mapping[str, Tensor], context: Mapping[str, Any]
    ) -> dict[str, Tensor]:
        pairs: list[tuple[str, DistillPoint, Tensor, Tensor]] = []
        for point in self.points:
            s_levels = self._levels_as_built(s_rec, point, "student")
            for level in self._levels[point.name]:
                label = _level_label(point, level)
                pairs.append((label, point, s_levels[level], t_feats[label]))
        if self.check_finite == "defer":
            self._record_finite(pairs)
        elif self.check_finite:
            self._check_finite(pairs)
        losses: dict[str, Tensor] = {}
        for label, point, s_feat, t_feat in pairs:
            slot = _slot(label)
            if slot in self.connectors:
                s_feat = self.connectors[slot](s_feat)
            if s_feat.shape != t_feat.shape:
                raise DistillationError(
                    f"point {label!r}: student feature {tuple(s_feat.shape)} does not match teacher "
                    f"{tuple(t_feat.shape)} (shapes changed since build?)"
                )
            loss_fn = self.loss_modules[slot] if slot in self.loss_modules else self._loss_fns[slot]
            extra = self._context_for(label, loss_fn, context)
            with torch.autocast(s_feat.device.type, enabled=False):
                value = loss_fn(s_feat.float(), t_feat.float(), **extra)
            losses[f"distill.{label}"] = point.weight * value
        losses["distill_total"] = torch.stack(list(losses.values())).sum()
        return losses

    @staticmethod
    def _context_for(label: str, loss_fn: LossLike, context: Mapping[str, Any]) -> dict[str, Any]:
        keys = tuple(getattr(loss_fn, "context_keys", ()))
        missing = [k for k in keys if k not in context]
        if missing:
            raise DistillationError(
                f"point {label!r}: its loss needs {missing} from each batch; pass "
                f"loss_context={{{', '.join(repr(k) + ': ...' for k in missing)}}} to Distiller.forward"
            )
        return {k: context[k] for k in keys}

    @torch.no_grad()
    def _record_finite(self, pairs: list[tuple[str, DistillPoint, Tensor, Tensor]]) -> None:
        for label, _, s, t in pairs:
            bad = ~(torch.isfinite(s).all() & torch.isfinite(t).all())
            self._nonfinite[label] = self._nonfinite[label] | bad if label in self._nonfinite else bad

    def nonfinite_features(self, reset: bool = True) -> list[str]:
        """Points whose student or teacher feature held NaN/Inf since the last reset (``"defer"`` mode; a host sync)."""
        flags = torch.stack(list(self._nonfinite.values())).tolist() if self._nonfinite else []
        labels = [label for label, flag in zip(self._nonfinite, flags, strict=True) if flag]
        if reset:
            self._nonfinite.clear()
        return labels

    @staticmethod
    def _check_finite(pairs: list[tuple[str, DistillPoint, Tensor, Tensor]]) -> None:
        flags = torch.stack([torch.isfinite(f).all() for _, _, s, t in pairs for f in (s, t)])
        if bool(flags.all()):
            return
        bad = flags.view(-1, 2).logical_not().nonzero().tolist()
        label = pairs[bad[0][0]][0]
        role = "student" if bad[0][1] == 0 else "teacher"
        raise DistillationError(f"point {label!r}: {role} feature contains NaN or Inf")
