"""The training loop: one code path for teacher, student-alone and distilled runs, 1..N processes.

The per-step hot path waits for the device only where it must. Whether the loss is finite is
recorded on the device every step (the first non-finite step number) and read on the host only at
check steps: logging steps, checkpoint and evaluation steps, a signal, the last step. At every
check that finds only finite losses, the trainer keeps a copy of its whole state (on the CPU); when
a check finds a NaN/Inf, that last good copy is restored, written as a checkpoint, and the run stops
naming the first bad step. Logged values stay on the device until a logging step converts them.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import signal
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any, NoReturn, cast

import torch
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel as DDP
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

from ..atomic import atomic_write_json
from ..config import TrainConfig
from ..data import UnreadableError, set_epoch
from ..distiller import Distiller
from ..errors import AvatarKDError, DataError, message_of
from ..tasks import Task
from .checkpoint import list_checkpoints, load_checked, load_file, rng_state, save_checkpoint, set_rng_state
from .distributed import DistContext, all_true, barrier
from .export import export_student
from .loaders import eval_sampler, make_loader, training_sampler
from .logger import MetricLogger
from .optim import build_optimisation
from .plotting import plot_run
from .signals import Stopped, stop_signals
from .test_hooks import signal_at

log = logging.getLogger(__name__)


class NonFiniteLossError(AvatarKDError, FloatingPointError):
    """The loss became NaN/Inf; the last good state was saved."""


def _host_copy(obj: Any) -> Any:
    """A copy of a (nested) state whose tensors live on the CPU and share nothing with the original."""
    if isinstance(obj, torch.Tensor):
        return obj.detach().to("cpu", copy=True)
    if isinstance(obj, dict):
        return {k: _host_copy(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(_host_copy(v) for v in obj)
    return copy.deepcopy(obj)


class Trainer:
    """Optimisation, checkpoints, logging and distribution for one run whose parts are already built.

    ``avatarkd.runner.build_trainer`` makes the parts from a config (task, datasets, student,
    distiller) and hands them over; the trainer does not know how models or losses are made.
    ``resume_from``: a checkpoint to continue from (None: start at step 0).
    """

    def __init__(
        self,
        cfg: TrainConfig,
        task: Task,
        model: nn.Module,
        train_set: Dataset,
        val_set: Dataset,
        *,
        ctx: DistContext,
        distiller: Distiller | None = None,
        generator: torch.Generator | None = None,
        resume_from: Path | None = None,
    ) -> None:
        self.cfg = cfg
        self.ctx = ctx
        self.task = task
        self.out = Path(cfg.output_dir)
        self.model = model
        self.distiller = distiller
        self.generator = generator
        self._signal: int | None = None
        self._bar: tqdm | None = None  # the progress bar while the loop runs
        self._resume_from = resume_from
        self._first_bad = torch.zeros((), dtype=torch.long, device=ctx.device)  # first non-finite step, 0: none
        self._good: dict[str, Any] | None = None  # the state at the last check that found only finite losses
        self._modes_set = False  # train/eval modes of the modules as train_step wants them
        if distiller is not None and distiller.check_finite is True:
            distiller.check_finite = "defer"  # features are checked with the loss, at check steps
        self._build_data(train_set, val_set)
        self._wrap_models()
        self._build_optim()
        self.step = 0
        self.start_step = 0

    # ------------------------------------------------------------------ building
    def _build_data(self, train: Dataset, val: Dataset) -> None:
        self.train_set = train  # augmented per (seed, epoch, index) by the data layer
        self.val_set = val
        self.sampler, self.batch_size, self.batches_per_epoch = training_sampler(
            train, self.cfg.data.batch_size, self.cfg.seed, self.ctx
        )

    def _loader(self, dataset: Any, sampler: Sampler, batch_size: int, drop_last: bool, epoch: int = 0) -> DataLoader:
        return make_loader(
            dataset,
            sampler,
            batch_size,
            collate=self.task.collate,
            num_workers=self.cfg.data.num_workers,
            drop_last=drop_last,
            pin_memory=self.ctx.device.type == "cuda",
            seed=self.cfg.seed,
            epoch=epoch,
        )

    def val_loader(self) -> DataLoader:
        batch_size = self.cfg.data.val_batch_size or self.cfg.data.batch_size
        return self._loader(self.val_set, eval_sampler(self.val_set, self.ctx), batch_size, False)

    def _wrap_models(self) -> None:
        device = self.ctx.device
        self.trainable: nn.Module = self.distiller if self.distiller is not None else self.model
        self.train_module: nn.Module = self.trainable
        if self.ctx.distributed:
            ids = [device.index] if device.type == "cuda" else None
            if device.type == "cuda" and self.cfg.train.sync_bn:
                nn.SyncBatchNorm.convert_sync_batchnorm(self.model)  # in place, before DDP wraps it
            self.train_module = DDP(self.trainable, device_ids=ids)

    def _build_optim(self) -> None:
        params = (
            self.distiller.trainable_parameters()
            if self.distiller is not None
            else [p for p in self.model.parameters() if p.requires_grad]
        )
        parts = build_optimisation(self.cfg, params, self.ctx.device)
        self.optimizer, self.scheduler, self.scaler = parts.optimizer, parts.scheduler, parts.scaler
        self.amp_dtype = parts.amp_dtype

    # ------------------------------------------------------------------ state
    def state(self) -> dict[str, Any]:
        return {
            "model": self.model.state_dict(),
            "distill": self.distiller.distill_state_dict() if self.distiller is not None else None,
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict(),
            "config": json.loads(self.cfg.model_dump_json()),
            "task": self.cfg.task,
            "class_names": self.task.class_names,
        }

    def load_state(self, ckpt: dict[str, Any], path: Path) -> None:
        if ckpt.get("format") != "avatarkd-checkpoint-1":
            raise AvatarKDError(f"{path}: not an avatarkd training checkpoint (use model.weights for plain weights)")
        load_checked(self.model, ckpt["model"], path, "student")
        if self.distiller is not None:
            if ckpt.get("distill") is None:
                raise AvatarKDError(f"{path}: checkpoint has no distillation state but this run distils")
            self.distiller.load_distill_state_dict(ckpt["distill"])
        self.optimizer.load_state_dict(ckpt["optimizer"])
        self.scheduler.load_state_dict(ckpt["scheduler"])
        self.scaler.load_state_dict(ckpt["scaler"])
        per_rank = ckpt["rng"]
        if len(per_rank) != self.ctx.world_size:
            log.warning(
                "checkpoint saved by %d processes, resuming with %d: random streams restart per rank",
                len(per_rank),
                self.ctx.world_size,
            )
        set_rng_state(per_rank[min(self.ctx.rank, len(per_rank) - 1)], self.generator)
        self.step = int(ckpt["step"])

    def save(self) -> Path | None:
        """Collective: every rank contributes its RNG states, rank 0 writes."""
        rngs: list[Any] = [rng_state(self.generator)]
        if self.ctx.distributed:
            rngs = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(rngs, rng_state(self.generator))
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.out, self.step, {**self.state(), "rng": rngs}, self.cfg.train.keep_last)
        barrier(self.ctx)
        return path

    # ------------------------------------------------------------------ loop
    def _on_signal(self, signum: int, _frame: Any) -> None:
        log.warning("received signal %d: saving a checkpoint after this step", signum)
        self._signal = signum

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.ctx.device.type, dtype=self.amp_dtype)

    def _set_modes(self) -> None:
        """Train mode (frozen BatchNorm layers in eval mode); redone only after something changed it."""
        if self._modes_set and self.train_module.training:
            return
        self.train_module.train()
        if self.cfg.model.freeze_bn:
            for m in self.model.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        self._modes_set = True

    def train_step(self, batch: Any) -> dict[str, torch.Tensor]:
        """One optimisation step. Never waits for the device: a non-finite loss is only recorded
        (``_first_bad``) and acted on at the next check (``check_finite``)."""
        self._set_modes()
        with self._autocast():
            if self.distiller is not None:
                losses = self.task.distill_losses(self.train_module, batch)
            else:
                losses = self.task.losses(self.train_module, batch)
        task_total = cast(Tensor, sum(v for k, v in losses.items() if k.startswith("loss_")))
        total = task_total + losses["distill_total"] if "distill_total" in losses else task_total
        with torch.no_grad():
            first_bad_now = (self._first_bad == 0) & ~torch.isfinite(total.detach())
            self._first_bad = torch.where(first_bad_now, self.step + 1, self._first_bad)
        self.optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(total).backward()
        if self.cfg.optim.max_grad_norm:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(
                [p for g in self.optimizer.param_groups for p in g["params"]], self.cfg.optim.max_grad_norm
            )
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.step += 1
        return {"loss": total.detach(), "loss_task": task_total.detach(), **{k: v.detach() for k, v in losses.items()}}

    def evaluate(self) -> dict[str, float]:
        self.model.eval()
        with self._autocast():
            metrics = self.task.evaluate(self.model, self.val_loader(), self.ctx.device)
        self.model.train()
        self._modes_set = False
        if metrics.get("predicted_classes", 2) <= 1 and self.task.num_classes > 1 and self.ctx.is_main:
            log.warning(
                "the evaluated model predicts %s class for every input (%s): its score is chance level; "
                "check the learning rate, the schedule's length and BatchNorm statistics "
                "(model.bn_momentum, model.freeze_bn)",
                "no" if metrics["predicted_classes"] == 0 else "one",
                self.task.primary_metric,
            )
        return metrics

    def fit(self) -> dict[str, Any]:
        cfg, ctx = self.cfg, self.ctx
        if self._resume_from is not None:
            self.load_state(load_file(self._resume_from), self._resume_from)
            self.start_step = self.step
            log.info("resumed from %s at step %d", self._resume_from, self.step)
        logger = MetricLogger(self.out, enabled=ctx.is_main, resume_step=self.step)
        start = time.perf_counter()
        try:
            with stop_signals(self._on_signal):
                self._loop(logger)
                metrics = self._evaluate_or_stop()
                logger.log(self.step, {f"eval/{k}": v for k, v in metrics.items()})
                self.save()
        finally:
            logger.close()
        wall = time.perf_counter() - start
        result = {
            "task": cfg.task,
            "step": self.step,
            "start_step": self.start_step,
            "metrics": metrics,
            "primary_metric": self.task.primary_metric,
            "wall_seconds": round(wall, 1),
            "world_size": ctx.world_size,
            "device": str(ctx.device),
        }
        if ctx.distributed:
            result["replicas_identical"] = self._replicas_identical()
        cache = self.distiller.teacher_cache if self.distiller is not None else None
        if cache is not None:
            result["teacher_cache"] = cache.summary()
            if cache.unwritten:
                log.warning(
                    "teacher cache: %d entries were not written (distill.teacher_cache_max_gb reached); %d were",
                    cache.unwritten,
                    cache.written,
                )
        if ctx.is_main:
            self._finish(result)
        return result

    def _replicas_identical(self) -> bool:
        """Whether every rank ends with the same student, connectors and loss-module state (collective)."""
        state = self.distiller.distill_state_dict() if self.distiller is not None else self.model.state_dict()
        digest = hashlib.sha256()
        for name, tensor in state.items():
            digest.update(
                name.encode() + tensor.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy().tobytes()
            )
        digests: list[str | None] = [None] * self.ctx.world_size
        torch.distributed.all_gather_object(digests, digest.hexdigest())
        return len(set(digests)) == 1

    # ------------------------------------------------------------------ finiteness checks
    def _keep_good_state(self) -> None:
        """Copy the whole training state to the host: what a NaN later rolls back to."""
        self._good = {
            "step": self.step,
            "state": _host_copy(self.state()),
            "rng": _host_copy(rng_state(self.generator)),
        }

    def check_finite(self) -> None:
        """Collective: read the device's non-finite record (one host sync). All finite: keep this
        state as the last good one. Else restore and save the last good state and raise."""
        bad = int(self._first_bad.item())
        if all_true(bad == 0, self.ctx):
            if self.distiller is not None:
                self.distiller.nonfinite_features()  # a NaN feature that left the loss finite: forget it
            self._keep_good_state()
            return
        bad_steps = [bad]
        if self.ctx.distributed:
            bad_steps = [0] * self.ctx.world_size
            torch.distributed.all_gather_object(bad_steps, bad)
        first = min(b for b in bad_steps if b > 0)
        points = self.distiller.nonfinite_features() if self.distiller is not None else []
        path = self._restore_good_state()
        where = f"; NaN/Inf features at points {points}" if points else ""
        raise NonFiniteLossError(
            f"loss is NaN/Inf at step {first}; last good state saved to {path or self.out / 'checkpoints'}"
            f" (step {self.step}, the last check before it; train.log_every sets how often losses are checked){where}"
        )

    def _restore_good_state(self) -> Path | None:
        """Collective: load the last good state back into the trainer and write it as a checkpoint."""
        good = self._good
        if good is None:  # a check always runs before the first step; kept for library callers
            raise NonFiniteLossError(f"loss is NaN/Inf before step {self.step + 1} and no good state was kept")
        rngs = [good["rng"]]
        if self.ctx.distributed:
            rngs = [None] * self.ctx.world_size
            torch.distributed.all_gather_object(rngs, good["rng"])
        ckpt = {"format": "avatarkd-checkpoint-1", "step": good["step"], **good["state"], "rng": rngs}
        self.load_state(ckpt, self.out / "checkpoints")
        self._first_bad.zero_()
        path = None
        if self.ctx.is_main:
            path = save_checkpoint(self.out, good["step"], {**good["state"], "rng": rngs}, self.cfg.train.keep_last)
        barrier(self.ctx)
        return path

    def _log_row(self, values: dict[str, torch.Tensor], epoch: int) -> dict[str, Any]:
        """The step's values as floats: one device-to-host copy for all of them."""
        names = list(values)
        floats = torch.stack([values[k].detach().float().reshape(()) for k in names]).tolist() if names else []
        row: dict[str, Any] = dict(zip(names, floats, strict=True))
        row["lr"] = self.scheduler.get_last_lr()[0]
        row["epoch"] = epoch
        return row

    def _loop(self, logger: MetricLogger) -> None:
        cfg, ctx = self.cfg, self.ctx
        every = cfg.train
        bar = tqdm(
            total=every.steps,
            initial=self.step,
            disable=not ctx.is_main,
            desc=f"{cfg.task} {self.out.name}",
            mininterval=1.0 if sys.stderr.isatty() else 30.0,
            dynamic_ncols=True,
        )
        self._bar = bar
        try:
            self._steps(logger, bar)
        finally:
            bar.close()  # before any error line: the CLI prints it below the bar, never into it
            self._bar = None

    def _steps(self, logger: MetricLogger, bar: tqdm) -> None:
        cfg, ctx = self.cfg, self.ctx
        every = cfg.train
        self._keep_good_state()
        while self.step < every.steps:
            epoch, in_epoch = divmod(self.step, self.batches_per_epoch)
            set_epoch(self.train_set, epoch)
            self.sampler.set_position(epoch, in_epoch * self.batch_size)
            batches = iter(self._loader(self.train_set, self.sampler, self.batch_size, drop_last=True, epoch=epoch))
            while True:
                try:
                    batch = next(batches)
                except StopIteration:
                    break
                except DataError as err:  # a bad item the pre-flight sample missed
                    self._stop_on_data_error(err)
                signal_at(self.step)  # test-only: AVATARKD_TEST_SIGNAL_AT interrupts at an exact step
                values = self.train_step(self.task.to_device(batch, ctx.device))
                bar.update(1)
                log_now = self.step % every.log_every == 0 or self.step == every.steps
                eval_now = (
                    every.eval_every is not None and self.step % every.eval_every == 0 and self.step < every.steps
                )
                save_now = self.step % every.checkpoint_every == 0
                # one process: a signal is seen at the end of the step it arrived in; several: at the
                # next logging or checkpoint step (agreeing on it is a collective, kept off the hot path)
                if not ctx.distributed:
                    stop = self._signal is not None
                else:
                    stop = (log_now or save_now) and not all_true(self._signal is None, ctx)
                if log_now or eval_now or save_now or stop:
                    self.check_finite()  # never log, evaluate or save past a NaN
                if log_now:
                    row = self._log_row(values, epoch)
                    logger.log(self.step, row)
                    bar.set_postfix(loss=f"{row['loss']:.4g}")
                if eval_now:
                    logger.log(self.step, {f"eval/{k}": v for k, v in self._evaluate_or_stop().items()})
                if save_now or stop:
                    self.save()
                if stop:
                    raise Stopped(self._signal or signal.SIGTERM)
                if self.step >= every.steps:
                    break

    # ------------------------------------------------------------------ bad data
    def _evaluate_or_stop(self) -> dict[str, float]:
        """``evaluate``, saving the finished step first if a bad evaluation image stops it."""
        try:
            return self.evaluate()
        except DataError as err:
            self._stop_on_data_error(err)

    def _stop_on_data_error(self, err: DataError) -> NoReturn:
        """A data error found mid-run (``check-data`` reads only a sample): keep the work done so far.

        The last completed step is checked for NaN like any checkpoint step and saved, so that after
        the user fixes the file, ``--resume`` continues exactly where this run stopped (the data
        order and augmentation depend only on the seed, the epoch and the index). With several
        processes the other ranks cannot join a save from here: the newest scheduled checkpoint
        is what a resume starts from.
        """
        if self._bar is not None:
            self._bar.close()  # the save's log line and the error go below the bar
        message = message_of(err)
        skip = "; or set data.skip_unreadable: true to skip such items" if isinstance(err, UnreadableError) else ""
        if self.ctx.distributed:
            newest = list_checkpoints(self.out)
            where = f"the newest checkpoint is step {newest[-1][0]}" if newest else "no checkpoint was saved yet"
            raise DataError(
                f"{message} (rank {self.ctx.rank}, at step {self.step + 1}; {where}); fix the file and continue "
                f"with --resume{skip}"
            ) from None
        self.check_finite()  # never save past a NaN (that raises its own error, with the state it saved)
        path = self.save()
        raise DataError(
            f"{message} (found at step {self.step + 1}; step {self.step} saved to {path}); fix the file and "
            f"continue with --resume{skip}"
        ) from None

    # ------------------------------------------------------------------ outputs
    def _finish(self, result: dict[str, Any]) -> None:
        export_student(self.model, self.out / "student.pt", self.cfg, self.task.class_names)
        atomic_write_json(self.out / "metrics.json", result)
        if self.cfg.train.plots:
            plot_run(self.out, self.task, self.model, self.val_set, self.ctx.device, self.distiller)


__all__ = ["Trainer", "NonFiniteLossError", "Stopped"]
