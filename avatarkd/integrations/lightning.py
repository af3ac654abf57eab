"""AKD in a Lightning training loop: a ``LightningModule`` around ``Distiller``.

``pip install 'avatarkd[lightning]'`` (``pytorch-lightning``, or the ``lightning`` package: either is
used). Why a module of its own rather than 15 lines in the user's code:

- **Checkpoints hold the student and the trainable distillation parts only** (connectors, MGD
  generators, MasKD tokens, uncertainty estimates), never the frozen teacher, which has its own
  weights file and may be many times the student's size. On load, the teacher's current weights
  are put back in before Lightning's strict ``load_state_dict``, so the usual
  ``load_from_checkpoint`` and ``Trainer.fit(ckpt_path=...)`` work.
- **No example batch**: the connectors and per-level loss modules depend on feature shapes, which
  ``Distiller.build`` reads from one forward pass. Here that pass runs in ``__init__`` on a zero
  image of ``input_shape``, so ``load_from_checkpoint`` rebuilds exactly the parts the checkpoint
  holds, deterministically, before any data is seen.
- **The teacher stays frozen in eval mode**: ``Distiller.train`` keeps it in eval, its parameters
  do not require gradients and ``configure_optimizers`` sees only ``trainable_parameters()``.

Use::

    module = AvatarKDModule(student, teacher, points=[{"name": "feat", "student": "backbone.body",
                            "teacher": "backbone", "teacher_key": "out", "loss": "cwd"}],
                            input_shape=(3, 512, 512), akd={"num_avatars": 4})
    Trainer(max_steps=...).fit(module, loader)
    again = AvatarKDModule.load_from_checkpoint(path, student=new_student(), teacher=teacher)

``points`` and ``akd`` are the YAML ``distill:`` section's (validated the same way) and are saved
as hyperparameters; ``student`` and ``teacher`` are modules and are passed again on load. Override
``task_loss`` (default: cross-entropy, logits upsampled to a mask's size) and ``split_batch``
(default: ``(images, target)`` tuples) for other tasks.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ..config.distill import DistillerConfig
from ..distiller import Distiller, build_points
from ..errors import ConfigError
from ..models import output_item

try:  # the standalone package first, then the unified one
    import pytorch_lightning as pl
except ImportError:  # pragma: no cover - depends on what is installed
    try:
        import lightning.pytorch as pl  # type: ignore[no-redef]
    except ImportError as err:
        raise ImportError("avatarkd.integrations.lightning needs Lightning: pip install 'avatarkd[lightning]'") from err

TEACHER_PREFIX = "distiller.teacher."


class AvatarKDModule(pl.LightningModule):
    """A LightningModule that distils ``teacher`` into ``student`` at ``points`` with AKD.

    Args:
        student, teacher: any ``nn.Module``s; the teacher should hold its trained weights.
        points: the ``distill.points`` list of the YAML schema (dicts; saved as hyperparameters).
        input_shape: one input's shape without the batch, e.g. ``(3, H, W)``: the zero example the
            connectors are built on (the same shapes as training inputs of that size).
        akd: the ``distill.akd`` section (e.g. ``{"num_avatars": 4, "p": 0.1}``).
        lr, weight_decay: AdamW over the trainable parameters (override ``configure_optimizers``
            for anything else).
        output_key: where the logits are in a dict/ModelOutput output (default ``out``, or
            ``logits`` for Hugging Face), as ``model.output_key``.
        ignore_index: label value the default ``task_loss`` ignores.
    """

    def __init__(
        self,
        student: nn.Module,
        teacher: nn.Module,
        points: Sequence[Mapping[str, Any]],
        input_shape: Sequence[int],
        akd: Mapping[str, Any] | None = None,
        lr: float = 1e-3,
        weight_decay: float = 1e-4,
        output_key: str | None = None,
        ignore_index: int = 255,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["student", "teacher"])
        try:
            cfg = DistillerConfig.model_validate({"points": list(points), "akd": dict(akd or {})})
        except ValueError as err:
            raise ConfigError(f"AvatarKDModule points/akd: {err}") from None
        self.distiller = Distiller(student, teacher, build_points(cfg))
        # the lazily-shaped parts (connectors, per-level loss modules), built now from shapes alone
        example = torch.zeros(2, *input_shape, device=next(student.parameters()).device)
        self.distiller.build(example)

    @property
    def student(self) -> nn.Module:
        return self.distiller.student

    @property
    def teacher(self) -> nn.Module:
        return self.distiller.teacher

    # ------------------------------------------------------------------ steps
    def forward(self, images: Tensor) -> Any:
        """The student alone (inference)."""
        return self.student(images)

    def split_batch(self, batch: Any) -> tuple[Tensor, Any, dict[str, Any]]:
        """(inputs, target, loss_context) of a batch; default: an ``(images, target)`` pair."""
        images, target = batch[0], batch[1]
        context = {"target": target.masked_fill(target == self.hparams["ignore_index"], -1)}
        return images, target, context

    def task_loss(self, output: Any, target: Tensor) -> Tensor:
        """Cross-entropy of the student's logits; dense logits are upsampled to the mask's size."""
        logits = output_item(output, self.hparams["output_key"])
        if logits.dim() == 4 and tuple(logits.shape[-2:]) != tuple(target.shape[-2:]):
            logits = F.interpolate(logits, size=tuple(target.shape[-2:]), mode="bilinear", align_corners=False)
        return F.cross_entropy(logits.float(), target, ignore_index=self.hparams["ignore_index"])

    def training_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, target, context = self.split_batch(batch)
        output, losses = self.distiller(images, loss_context=context)
        task = self.task_loss(output, target)
        self.log_dict({"loss_task": task, **losses}, prog_bar=False, on_step=True)
        return task + losses["distill_total"]

    def validation_step(self, batch: Any, batch_idx: int) -> Tensor:
        images, target, _ = self.split_batch(batch)
        loss = self.task_loss(self.student(images), target)
        self.log("val_loss", loss, prog_bar=True)
        return loss

    def configure_optimizers(self) -> Any:
        return torch.optim.AdamW(
            self.distiller.trainable_parameters(), lr=self.hparams["lr"], weight_decay=self.hparams["weight_decay"]
        )

    # ------------------------------------------------------------------ checkpoints without the teacher
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(TEACHER_PREFIX)]:
            del state[key]

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # the teacher is not in the file: keep the one this module was built with (strict load)
        state = checkpoint["state_dict"]
        for key, value in self.distiller.teacher.state_dict().items():
            state.setdefault(TEACHER_PREFIX + key, value)

    def student_state_dict(self) -> dict[str, Tensor]:
        """The student's own ``state_dict`` (loads strict into the student's class; no connectors)."""
        return {k: v.detach().cpu() for k, v in self.student.state_dict().items()}


__all__ = ["AvatarKDModule", "TEACHER_PREFIX"]
