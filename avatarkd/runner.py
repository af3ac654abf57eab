"""Composes a run from its config: Task + models + Distiller + Trainer.

This is the only place that knows how the parts fit together; the trainer receives them built,
the tasks never see the trainer, and the distiller never sees a config file.
"""

from __future__ import annotations

import logging
import shutil
from collections.abc import Sized
from pathlib import Path
from typing import Any, cast

import torch
from torch.utils.data import Dataset, Subset

from .config import ModelConfig, TrainConfig
from .data import SplitReport, check_dataset, format_reports, set_epoch
from .data.check import sample_indices
from .distiller import Distiller, TeacherCache, build_points, missing_context
from .distiller.teacher_cache import expected_use
from .engine.checkpoint import find_resume, load_checked
from .engine.distributed import DistContext, cleanup, init_distributed
from .engine.trainer import Trainer
from .errors import ConfigError, DataError
from .models import configure_normalization, exported_normalization, load_configured_weights, normalization_key
from .tasks import Task, make_task

log = logging.getLogger(__name__)


def check_loss_context(cfg: TrainConfig, task: Task) -> None:
    """A loss that needs per-batch inputs (DKD: the labels) the task does not give fails here, in one line."""
    if cfg.distill is None:
        return
    for index, loss, key in missing_context(cfg.distill, task.context_keys):
        raise ConfigError(
            f"distill.points.{index}.loss: {loss!r} needs the batch's {key!r}, which the "
            f"{task.name} task does not provide (it provides: {', '.join(task.context_keys) or 'nothing'})"
        )


def _limit(ds: Dataset, n: int | None) -> Dataset:
    return Subset(ds, range(min(n, len(ds)))) if n is not None else ds  # type: ignore[arg-type]


def build_datasets(task: Task, cfg: TrainConfig) -> tuple[Dataset, Dataset]:
    train, val = task.datasets(cfg.data)
    train, val = _limit(train, cfg.data.limit_train), _limit(val, cfg.data.limit_val)
    if len(train) == 0 or len(val) == 0:  # type: ignore[arg-type]
        raise DataError(
            f"empty dataset: {len(train)} training and {len(val)} "  # type: ignore[arg-type]
            f"{cfg.eval.split} samples"
        )
    return train, val


def build_model(
    task: Task, mcfg: ModelConfig, role: str, device: torch.device, checkpoint: tuple[dict, Path] | None = None
) -> torch.nn.Module:
    """The model of ``mcfg`` on ``device``: built, its configured weights loaded (one log line, or one
    error line on a mismatch), its input normalisation attached.

    ``checkpoint``: ``(state_dict, path)`` of a training checkpoint, loaded instead of the configured
    weights (which are not read); what those recorded about input normalisation still holds.
    """
    model = task.build_model(mcfg).to(device)
    if mcfg.bn_momentum is not None:
        for module in model.modules():
            if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
                module.momentum = mcfg.bn_momentum
    if checkpoint is None:
        load_configured_weights(model, mcfg, role)
    else:
        load_checked(model, checkpoint[0], checkpoint[1], role)
    configure_normalization(model, mcfg, exported_normalization(mcfg), role)
    return model


def example_batch(task: Task, dataset: Dataset, device: torch.device) -> Any:
    """Two samples as a batch on ``device``: what models are checked and connectors are built on.

    Evaluation images may differ in size (they are not cropped); then one sample, so that
    segmentation and classification models get a stacked tensor as in training.
    """
    samples: list[Any] = []
    for i in range(len(dataset)):  # type: ignore[arg-type]
        if (sample := dataset[i]) is not None:  # None: an unreadable image skipped (data.skip_unreadable)
            samples.append(sample)
        if len(samples) == 2:
            break
    if not samples:
        raise DataError("no readable sample to build the models on")
    first = samples[0][0]
    if len(samples) > 1 and isinstance(first, torch.Tensor) and first.shape != samples[1][0].shape:
        samples = samples[:1]
    return task.to_device(task.collate(samples), device)


def check_datasets(
    cfg: TrainConfig, task: Task, train: Dataset, val: Dataset, samples: int | None
) -> list[SplitReport]:
    """The pre-flight check of both splits (``samples`` images each, all when None)."""
    reports = [
        check_dataset(ds, split, samples, cfg.data.skip_unreadable, cfg.data.ignore_index)
        for split, ds in (("train", train), (cfg.eval.split, val))
    ]
    task.check_reports(reports)
    return reports


def check_data(cfg: TrainConfig, samples: int | None) -> tuple[Task, list[SplitReport]]:
    """What ``avatarkd check-data`` runs: open both splits and read ``samples`` images of each."""
    task = make_task(cfg)
    train, val = build_datasets(task, cfg)
    return task, check_datasets(cfg, task, train, val, samples)


def build_distiller(
    cfg: TrainConfig, task: Task, student: torch.nn.Module, example_set: Dataset, ctx: DistContext
) -> tuple[Distiller, torch.Generator]:
    """The frozen teacher, the points and (optionally) the teacher cache, built on two example images."""
    assert cfg.distill is not None and cfg.teacher is not None and cfg.teacher.weights is not None  # validated
    device = ctx.device
    teacher = build_model(task, cfg.teacher, "teacher", device)
    # independent avatars per rank, reproducible from the seed
    generator = torch.Generator(device=device).manual_seed(cfg.seed * 7919 + ctx.rank)
    points = build_points(cfg.distill, generator)
    forward = task.teacher_forward(teacher)
    cache = None
    if cfg.distill.teacher_cache is not None:
        how = f"{forward.__module__}.{forward.__qualname__}" if forward is not None else "full forward"
        context: list[Any] = [(p.teacher, p.teacher_key) for p in points] + [how]
        # not part of the weights, but it changes the features (and detectors normalised with
        # ImageNet statistics before model.normalize existed: older caches must not be read)
        context.append(normalization_key(teacher))
        gb = cfg.distill.teacher_cache_max_gb
        cache = TeacherCache(
            cfg.distill.teacher_cache,
            teacher,
            context,
            max_bytes=None if gb is None else int(gb * 1e9),
            dtype=getattr(torch, cfg.distill.teacher_cache_dtype),
            writers=ctx.world_size,
        )
        log.info("teacher cache: %s", cache.dir)
    distiller = Distiller(student, teacher, points, teacher_forward=forward, teacher_cache=cache)
    distiller.build(task.images_of(example_batch(task, example_set, device)))
    return distiller, generator


def augmentation_variants(
    task: Task, train_set: Dataset, cache: TeacherCache, probes: int = 3, epochs: int = 4
) -> int | None:
    """How many different teacher inputs the augmentation makes of one training sample, by drawing a few
    samples in a few epochs (cache keys are input hashes): 1 for fixed data, 2 for flips, None when
    every draw was new (random crops, scales, colour). Touches no global random stream."""
    size = len(cast(Sized, train_set))
    seen = []
    for index in sample_indices(size, probes):
        keys: set[str] = set()
        for epoch in range(epochs):
            set_epoch(train_set, epoch)
            item = train_set[index]
            if item is not None:
                keys.update(cache.sample_keys([task.images_of(task.collate([item]))]) or [])
        seen.append(len(keys))
    set_epoch(train_set, 0)
    return None if seen and min(seen) == epochs else max(seen, default=1)


def estimate_teacher_cache(cfg: TrainConfig, task: Task, distiller: Distiller, train_set: Dataset) -> None:
    """Log what the teacher cache will hold (bytes per sample x entries vs budget and free disk) and the
    hit rate the augmentation allows; warn when it cannot hit or would fill the disk."""
    cache = distiller.teacher_cache
    size = len(cast(Sized, train_set))
    if cache is None or size == 0:
        return
    first = next((item for i in range(size) if (item := train_set[i]) is not None), None)
    if first is None:
        return
    device = next(distiller.student.parameters()).device
    per_entry = cache.entry_bytes(
        distiller.teacher_features(task.images_of(task.to_device(task.collate([first]), device)))
    )
    variants = augmentation_variants(task, train_set, cache)
    entries, hit_rate = expected_use(size, cfg.train.steps * cfg.data.batch_size, variants)
    need, free = entries * per_entry, shutil.disk_usage(cache.root).free
    budget = cache.max_bytes
    log.info(
        "teacher cache estimate: %.3g MB per sample (%s), %d entries over this run = %.3g GB; expected hit rate "
        "%.0f%%; budget %s; free disk %.3g GB",
        per_entry / 1e6,
        cfg.distill.teacher_cache_dtype if cfg.distill else "float32",
        entries,
        need / 1e9,
        100 * hit_rate,
        "none" if budget is None else f"{budget / 1e9:.3g} GB",
        free / 1e9,
    )
    if variants is None:
        log.warning(
            "teacher cache: the training augmentation gives the teacher a new input at every draw (random crops, "
            "scales or colour), so no entry is ever read back; it only costs disk: remove distill.teacher_cache"
        )
    if need > free and (budget is None or budget > free):
        log.warning(
            "teacher cache: this run would write ~%.3g GB but %.3g GB are free; set distill.teacher_cache_max_gb "
            "(and/or distill.teacher_cache_dtype: float16)",
            need / 1e9,
            free / 1e9,
        )


def build_trainer(
    cfg: TrainConfig, resume: bool | Path = False, ctx: DistContext | None = None, check_output: bool = True
) -> Trainer:
    """Everything a run needs, built in a fixed order (so the seed gives the same initial weights).

    ``resume``: ``True`` continues from the newest checkpoint in ``output_dir`` (if any), a path
    from that checkpoint, ``False`` starts afresh and refuses an ``output_dir`` holding checkpoints.
    ``check_output=False`` skips that check (evaluation only).
    """
    task = make_task(cfg)
    check_loss_context(cfg, task)
    ctx = ctx or init_distributed(cfg.train.device)
    resume_from = find_resume(Path(cfg.output_dir), resume) if check_output else None  # fail before building
    torch.manual_seed(cfg.seed)
    train_set, val_set = build_datasets(task, cfg)
    if cfg.data.check_samples and check_output:
        reports = check_datasets(cfg, task, train_set, val_set, cfg.data.check_samples)
        log.info(
            "data check (%d images per split, data.check_samples):\n%s", cfg.data.check_samples, format_reports(reports)
        )
    model = build_model(task, cfg.model, "student", ctx.device)
    task.check_output(model, example_batch(task, val_set, ctx.device))  # a wrong output fails before training
    if not any(p.requires_grad for p in model.parameters()):
        raise ConfigError("model: the student has no trainable parameters")
    distiller = generator = None
    if cfg.distill is not None:
        distiller, generator = build_distiller(cfg, task, model, val_set, ctx)
        if ctx.is_main:
            estimate_teacher_cache(cfg, task, distiller, train_set)
    return Trainer(
        cfg, task, model, train_set, val_set, ctx=ctx, distiller=distiller, generator=generator, resume_from=resume_from
    )


def train(cfg: TrainConfig, resume: bool | Path = False) -> dict[str, Any]:
    """Train from a config (what ``avatarkd train`` runs); returns the final metrics."""
    trainer = build_trainer(cfg, resume=resume)
    try:
        return trainer.fit()
    finally:
        cleanup(trainer.ctx)


def evaluate(cfg: TrainConfig) -> dict[str, float]:
    """Metrics of ``cfg.model`` (with its ``weights``) on the validation set; nothing is written."""
    trainer = build_trainer(cfg, check_output=False)
    try:
        return trainer.evaluate()
    finally:
        cleanup(trainer.ctx)


__all__ = [
    "build_datasets",
    "build_distiller",
    "build_model",
    "build_trainer",
    "check_data",
    "check_datasets",
    "check_loss_context",
    "evaluate",
    "example_batch",
    "train",
]
