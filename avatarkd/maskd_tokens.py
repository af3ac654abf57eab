"""MasKD stage 1 (``avatarkd maskd-tokens``): receptive tokens learnt on the frozen teacher.

For every ``maskd`` point of a distillation config and every level of it (each FPN level has its
own tokens, as in the published code), a ``ReceptiveTokens`` module is trained so that the
teacher's own head, run on the token-masked feature, still solves the task:

    L = L_task(teacher with the point's output x replaced by sum_j w_nj * m_j * x) + sum_levels Dice(m)

``m_j = sigmoid(<token_j, x>)`` are the T attention maps, ``w_n = softmax(predictor(x))`` the
image's token weights and ``Dice`` the mean Dice coefficient between different maps (a
diversity penalty). Our reading of how the predictor trains: as in the released MasKD and AKD
code, the T masked features are mixed with the predicted weights into ONE feature that the head
sees (one head pass), so the predictor learns which tokens' regions the task needs for each
image; the per-token task losses weighted by ``w`` would cost T head passes and are not what
that code runs.

The feature is replaced by a forward hook on the point's teacher module, so the head is the
model's own training-mode forward (``Task.losses``): torchvision's RetinaNet, FCOS and Faster
R-CNN compute their losses on the masked FPN levels, a segmenter's head runs on the masked
backbone feature. The teacher's weights are frozen and its BatchNorm/Dropout stay in eval mode;
only the tokens and the predictor train. A model whose task loss does not depend on the point's
output (the head cannot be driven this way) is a one-line error.
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .atomic import atomic_torch_save
from .capacity import replace_levels, teacher_output_key
from .config import PointConfig, TrainConfig
from .distiller.recorder import resolve_module
from .engine.distributed import resolve_device
from .errors import ConfigError
from .losses.maskd import TOKENS_FORMAT, ReceptiveTokens, dice_coefficient
from .runner import build_datasets, build_model
from .tasks import Task, make_task

log = logging.getLogger(__name__)

DEFAULT_STEPS = 2000
DEFAULT_LR = 1e-3


def maskd_points(cfg: TrainConfig) -> list[PointConfig]:
    """The config's ``maskd`` points; none is a one-line error."""
    points = [p for p in (cfg.distill.points if cfg.distill else []) if p.loss == "maskd"]
    if not points:
        raise ConfigError("maskd-tokens: the config has no distillation point with loss: maskd")
    if cfg.teacher is None:
        raise ConfigError("maskd-tokens: the config has no teacher: section")
    return points


def _level_label(point: str, level: str) -> str:
    return f"{point}.{level}" if level else point


def _frozen_teacher(teacher: nn.Module) -> nn.Module:
    """Training mode (detectors return their losses only then), with frozen weights and eval-mode BN/Dropout."""
    teacher.requires_grad_(False).train()
    for module in teacher.modules():
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, nn.Dropout)):
            module.eval()
    return teacher


class TokenHook:
    """Replaces the point's teacher output by its token-masked form; keeps the pass's masks for the Dice penalty."""

    def __init__(self, module: nn.Module, point: PointConfig, tokens: nn.ModuleDict, labels: dict[str, str]) -> None:
        self.point, self.tokens, self.labels = point, tokens, labels
        self.masks: list[Tensor] = []
        self.outputs: dict[str, Tensor] = {}  # level -> the masked feature of the pass, for the dependency check
        self.shapes: dict[str, tuple[int, ...]] = {}
        self._handle = module.register_forward_hook(self._hook)

    def _mask(self, level: str, x: Tensor) -> Tensor:
        if x.dim() != 4:
            raise ConfigError(
                f"maskd-tokens: point {self.point.name!r}: the teacher output {level or '(tensor)'} has shape "
                f"{tuple(x.shape)}, not an (N, C, H, W) feature map that tokens can mask"
            )
        if not self.tokens:  # the first pass: only learn the levels and their channels
            self.shapes[level] = tuple(x.shape)
            return x
        masked, masks = self.tokens[self.labels[level]](x)
        self.masks.append(masks)
        self.outputs[level] = masked
        return masked

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        return replace_levels(output, teacher_output_key(self.point), self._mask)

    def remove(self) -> None:
        self._handle.remove()


def _batches(loader: DataLoader) -> Iterator[Any]:
    for batch in itertools.chain.from_iterable(itertools.repeat(loader)):
        if batch is not None:
            yield batch


def train_tokens(
    cfg: TrainConfig,
    out: Path,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    dice_weight: float = 1.0,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Stage 1 for every ``maskd`` point of ``cfg``; writes the tokens file ``out`` and returns it (with the losses).

    The file holds, per level label (``point[.level]``, the labels the distiller uses), the
    tokens, the predictor's weights, ``channels`` and ``num_tokens``: tensors, numbers and
    strings only, readable with ``torch.load(weights_only=True)``.
    """
    points = maskd_points(cfg)
    if steps < 1:
        raise ConfigError(f"maskd-tokens: --steps must be >= 1, got {steps}")
    task = make_task(cfg)
    train_set, _ = build_datasets(task, cfg)
    device = resolve_device(cfg.train.device)
    assert cfg.teacher is not None
    torch.manual_seed(cfg.seed)
    teacher = _frozen_teacher(build_model(task, cfg.teacher, "teacher", device))
    loader = DataLoader(
        train_set,
        batch_size=cfg.data.batch_size,
        shuffle=True,
        collate_fn=task.collate,
        num_workers=cfg.data.num_workers,
        drop_last=len(train_set) >= cfg.data.batch_size,  # type: ignore[arg-type]
        generator=torch.Generator().manual_seed(cfg.seed),
    )
    batches = _batches(loader)
    tokens = nn.ModuleDict()
    hooks: list[TokenHook] = []
    labels: dict[str, dict[str, str]] = {}
    first = task.to_device(next(batches), device)
    try:
        for point in points:
            module = resolve_module(teacher, point.teacher or point.student, "teacher")
            labels[point.name] = {}
            hooks.append(TokenHook(module, point, nn.ModuleDict(), labels[point.name]))
        with torch.no_grad():
            task.losses(teacher, first)  # records each level's shape
        for hook, point in zip(hooks, points, strict=True):
            num = int(point.loss_kwargs.get("num_tokens", 6))
            for level, shape in hook.shapes.items():
                slot = f"t{len(tokens)}"  # ModuleDict keys cannot hold dots
                tokens[slot] = ReceptiveTokens(shape[1], num).to(device)
                hook.labels[level] = slot
            hook.tokens = tokens
        if not len(tokens):
            raise ConfigError("maskd-tokens: no maskd point's teacher module ran in the teacher's training forward")
        optimizer = torch.optim.Adam(tokens.parameters(), lr=lr)
        history: list[float] = []
        bar = tqdm(range(steps), desc="maskd-tokens", disable=not show_progress, leave=False)
        for step in bar:
            batch = first if step == 0 else task.to_device(next(batches), device)
            task_loss, dice = _step_loss(task, teacher, batch, hooks)
            if step == 0:
                _check_driven(task_loss, hooks, points)
            loss = task_loss + dice_weight * dice
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            history.append(float(loss.detach()))
            bar.set_postfix(loss=f"{history[-1]:.4f}", dice=f"{float(dice.detach()):.3f}")
    finally:
        for hook in hooks:
            hook.remove()
    levels = {
        _level_label(point.name, level): cast(ReceptiveTokens, tokens[slot]).to_file()
        for hook, point in zip(hooks, points, strict=True)
        for level, slot in hook.labels.items()
    }
    data = {
        "format": TOKENS_FORMAT,
        "points": [p.name for p in points],
        "levels": levels,
        "steps": steps,
        "teacher_weights": str(cfg.teacher.weights),
    }
    atomic_torch_save(data, out)
    log.info("maskd-tokens: %d levels, loss %.4f -> %.4f; wrote %s", len(levels), history[0], history[-1], out)
    return {**data, "history": history}


def _step_loss(task: Task, teacher: nn.Module, batch: Any, hooks: list[TokenHook]) -> tuple[Tensor, Tensor]:
    for hook in hooks:
        hook.masks, hook.outputs = [], {}
    losses = task.losses(teacher, batch)
    task_loss = torch.stack([v for k, v in losses.items() if k.startswith("loss")]).sum()
    masks = [m for hook in hooks for m in hook.masks]
    dice = torch.stack([dice_coefficient(m) for m in masks]).sum() if masks else task_loss.new_zeros(())
    return task_loss, dice


def _check_driven(task_loss: Tensor, hooks: list[TokenHook], points: list[PointConfig]) -> None:
    """On the first step: the task loss depends on every masked level, else the head is not driven by it."""
    for hook, point in zip(hooks, points, strict=True):
        levels = list(hook.outputs)
        grads = torch.autograd.grad(
            task_loss, [hook.outputs[lv] for lv in levels], retain_graph=True, allow_unused=True
        )
        for level, grad in zip(levels, grads, strict=True):
            if grad is None:
                raise ConfigError(
                    f"maskd-tokens: point {point.name!r}: the teacher's task loss does not depend on the output "
                    f"of {point.teacher or point.student!r}{'.' + level if level else ''}, so its head cannot be "
                    "driven on masked features there; pick the module whose output the head reads "
                    "(backbone.fpn for detectors, backbone with key out for segmenters)"
                )


__all__ = ["DEFAULT_STEPS", "maskd_points", "train_tokens"]
