"""The model side of a task: building its models, checking their outputs, the teacher's cheap call."""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import nn

from ..config import ModelConfig, TrainConfig
from ..models import build_from_factory

Batch = Any
TeacherForward = Callable[..., Any]


class TaskModels:
    """Models for the task's classes (``num_classes``, known once the datasets are open or set)."""

    name: ClassVar[str]
    cfg: TrainConfig

    if TYPE_CHECKING:  # provided by Task and TaskData; declared for the type checker only

        @property
        def num_classes(self) -> int: ...

        def images_of(self, batch: Batch) -> Any: ...

    @abstractmethod
    def build_model(self, mcfg: ModelConfig) -> nn.Module:
        """The model of ``mcfg`` for ``num_classes`` classes, weights as initialised (the runner loads them)."""

    def factory_model(self, mcfg: ModelConfig, num_classes: int) -> nn.Module:
        """The user's ``model.factory`` (looked up beside the YAML file too), given ``num_classes`` if it takes one."""
        assert mcfg.factory is not None
        dirs = [mcfg.config_dir] if mcfg.config_dir is not None else []
        return build_from_factory(mcfg.factory, mcfg.kwargs, num_classes, dirs)

    @torch.no_grad()
    def check_output(self, model: nn.Module, batch: Batch) -> None:
        """Run ``model`` once (eval mode) on a batch and raise one ConfigError line if its output breaks the
        task's contract; called before training so that a wrong model fails before anything is written."""
        was_training = model.training
        model.eval()
        try:
            self.check_eval_output(model(self.images_of(batch)), batch)
        finally:
            model.train(was_training)

    def check_eval_output(self, output: Any, batch: Batch) -> None:
        """Raise a one-line ConfigError when an eval-mode ``output`` does not fit the task (default: anything goes)."""
        return None

    def backbone_forward(self, teacher: nn.Module) -> TeacherForward | None:
        """A call of the teacher's feature extractor alone, if this task's models have one."""
        return None

    def teacher_forward(self, teacher: nn.Module) -> TeacherForward | None:
        """A cheaper teacher call when every point reads the backbone (None: the full call).

        The features under ``backbone`` do not depend on the heads, so skipping the heads (and,
        for detectors, the box decoding and NMS) gives the same recorded tensors for less work.
        """
        points = self.cfg.distill.points if self.cfg.distill else []
        if not points or not all(_under_backbone(p.teacher or p.student) for p in points):
            return None
        return self.backbone_forward(teacher)


def _under_backbone(path: str) -> bool:
    return path == "backbone" or path.startswith("backbone.")
