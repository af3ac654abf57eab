"""The evaluation side of a task: predictions, the metric that scores them, and their pictures.

``Task.evaluate`` is ``predict`` + a ``Scorer``; keeping the two apart lets code that makes its
own predictions (the Avatars' ensemble and per-image oracle, ``avatarkd avatars``) be scored by
exactly the metric code that scores a model.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import ConfigError

Batch = Any


class Scorer(Protocol):
    """A task metric fed with predictions in ``predict``'s form, batch by batch."""

    def update(self, batch: Batch, predictions: Any) -> None: ...

    def compute(self) -> dict[str, float]: ...


def mean_probabilities(logits: Sequence[Tensor]) -> Tensor:
    """Log of the mean of the softmax probabilities (over dim 1) of several models' logits.

    A log so that the result is still a valid logits tensor for code that argmaxes or softmaxes it.
    """
    probs = torch.stack([F.softmax(t.float(), dim=1) for t in logits]).mean(0)
    return probs.clamp_min(torch.finfo(probs.dtype).tiny).log()


class TaskEvaluation:
    """Predictions, their metric, the per-image score and ensemble of ``avatarkd avatars``, and pictures."""

    name: ClassVar[str]

    if TYPE_CHECKING:  # provided by TaskData; declared for the type checker only

        def to_device(self, batch: Batch, device: torch.device) -> Batch: ...

    @torch.no_grad()
    def evaluate(self, model: nn.Module, batches: Iterable[Batch], device: torch.device) -> dict[str, float]:
        """Metrics over the validation set (gathered across ranks), keyed without prefix: ``predict`` + ``scorer``."""
        scorer = self.scorer()
        for batch in batches:
            if batch is None:
                continue
            batch = self.to_device(batch, device)
            scorer.update(batch, self.predict(model, batch))
        return scorer.compute()

    def scorer(self) -> Scorer:
        """A fresh metric accumulator for ``predict``'s predictions (tasks overriding ``evaluate`` may lack one)."""
        raise ConfigError(f"the {self.name} task has no scorer for given predictions (Task.scorer)")

    @abstractmethod
    def predict(self, model: nn.Module, batch: Batch) -> Any:
        """Predictions on one batch, in the form the task's plot function draws."""

    def image_scores(self, batch: Batch, predictions: Any) -> Tensor:
        """One number per image, higher is better: how the per-image oracle (``avatarkd avatars``) picks."""
        raise ConfigError(f"the {self.name} task has no per-image score (Task.image_scores)")

    def ensemble(self, outputs: Sequence[Any]) -> Any:
        """One eval-mode model output from several models' outputs on the same batch (``avatarkd avatars``)."""
        raise ConfigError(f"the {self.name} task cannot ensemble model outputs (Task.ensemble)")

    def plot_predictions(self, batch: Batch, predictions: Any, out_png: Path) -> Path | None:
        """A picture of predictions vs ground truth; None where a picture says little."""
        return None
