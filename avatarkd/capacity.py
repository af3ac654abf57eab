"""How good are a teacher's Avatars? What ``avatarkd avatars`` measures.

The paper's first claim is that Avatars, the teacher with a perturbed intermediate feature, have a
higher "upper limit of working capacity" than the vanilla teacher. This module makes that
measurable on the user's own teacher, per distillation point and drop rate ``p``, on one split:

- **teacher**: the task metric of the vanilla teacher (``Task.evaluate``);
- **avatars**: the metric of each of K single Avatars. An Avatar is the whole teacher with the
  point's output replaced, through a forward hook, by one draw of the configured perturbation
  (``avatars.Avatars``). Each Avatar owns a generator with its own seed, reset for every ``p``,
  so Avatar k is one fixed sequence of draws over the split (the same in every pass);
- **ensemble**: the K Avatars as one model (``Task.ensemble``: the mean of the softmax
  probabilities for segmentation and classification; for detection the K Avatars' detections
  pooled per image and merged by class-wise NMS);
- **oracle**: for each image the Avatar with the best per-image score (``Task.image_scores``:
  pixel accuracy, correctness, true positives at IoU 0.5 minus false positives), then the task
  metric of those chosen predictions over the split. It needs the labels to choose, so it is an
  upper limit, not a model one could deploy.

Every number comes from the task's own prediction and metric code (``Task.predict`` and
``Task.scorer``, which is what ``Task.evaluate`` runs), so it is comparable with ``avatarkd eval``.

It also reports the uncertainty factor's per-channel sigma at each ``p``: the same estimate
``uncertainty.Uncertainty`` forms in the config's mode, from the squared differences between these
Avatars and the teacher over the whole split (an exact mean, not the training EMA).
"""

from __future__ import annotations

import logging
import math
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm import tqdm

from .atomic import atomic_write_json
from .avatars import Avatars
from .config import PointConfig, TrainConfig
from .config.distill import OutputKey
from .distiller.recorder import resolve_module
from .engine.distributed import resolve_device
from .errors import ConfigError
from .naming import did_you_mean
from .plots import save_figure
from .runner import build_datasets, build_model
from .tasks import Task, make_task
from .uncertainty import Uncertainty

log = logging.getLogger(__name__)

DEFAULT_PS = (0.05, 0.1, 0.2, 0.3)
DEFAULT_NUM_AVATARS = 4


# ----------------------------------------------------------------------------- what to measure
def teacher_output_key(point: PointConfig) -> OutputKey | None:
    """The item of the teacher module's output the point compares (``teacher_key``, else the shared ``key``)."""
    return point.teacher_key if point.teacher_key is not None else point.key


def select_points(cfg: TrainConfig, names: Sequence[str] | None) -> list[PointConfig]:
    """The config's distillation points named ``names`` (all when None); a wrong name is a one-line error."""
    if cfg.distill is None or not cfg.distill.points:
        raise ConfigError("avatars: the config has no distillation points (distill.points); use a distillation config")
    if cfg.teacher is None:
        raise ConfigError("avatars: the config has no teacher: section")
    by_name = {p.name: p for p in cfg.distill.points}
    if not names:
        return list(by_name.values())
    for name in names:
        if name not in by_name:
            raise ConfigError(
                f"avatars: no distillation point named {name!r}{did_you_mean(name, by_name)}; "
                f"the config has {', '.join(by_name)}"
            )
    return [by_name[n] for n in dict.fromkeys(names)]


def check_rates(ps: Sequence[float], perturbation: str) -> list[float]:
    """Drop rates in [0, 1) for the dropout kinds, noise strengths >= 0 otherwise."""
    if not ps:
        raise ConfigError("avatars: give at least one p")
    for p in ps:
        if not math.isfinite(p) or p < 0 or (perturbation.endswith("dropout") and p >= 1):
            bound = "[0, 1)" if perturbation.endswith("dropout") else "[0, inf)"
            raise ConfigError(f"avatars: p must be in {bound} for {perturbation} Avatars, got {p}")
    return [float(p) for p in ps]


def parse_rates(text: str) -> list[float]:
    """``"0.05,0.1"`` -> [0.05, 0.1]; anything else is a one-line error."""
    try:
        return [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise ConfigError(f"avatars: --p takes comma-separated numbers, e.g. 0.05,0.1,0.2; got {text!r}") from None


# ----------------------------------------------------------------------------- the Avatars
def _map_levels(output: Any, fn: Callable[[str, Tensor], Tensor], prefix: str = "") -> Any:
    """``output`` with every tensor ``t`` replaced by ``fn(level_name, t)``, containers kept."""
    if isinstance(output, Tensor):
        return fn(prefix, output)
    if isinstance(output, Mapping):
        items = [(k, _map_levels(v, fn, f"{prefix}.{k}" if prefix else str(k))) for k, v in output.items()]
        return OrderedDict(items) if isinstance(output, OrderedDict) else type(output)(items)  # type: ignore[call-arg]
    if isinstance(output, (list, tuple)):
        items = [_map_levels(v, fn, f"{prefix}.{i}" if prefix else str(i)) for i, v in enumerate(output)]
        return output._make(items) if hasattr(output, "_make") else type(output)(items)
    return output


def replace_levels(output: Any, key: OutputKey | None, fn: Callable[[str, Tensor], Tensor]) -> Any:
    """A module output with its ``key`` item's tensors (every tensor when ``key`` is None) replaced by ``fn(level, t)``.

    Level names are the distiller's (``""`` for a tensor, the dict key or tuple index otherwise),
    so a forward hook returning this changes exactly what a distillation point compares. A list
    ``key`` is a path into nested outputs, as on a point.
    """
    if key is None:
        return _map_levels(output, fn)
    return _replace_item(output, key if isinstance(key, list) else [key], fn)


def _replace_item(output: Any, steps: list[str | int], fn: Callable[[str, Tensor], Tensor]) -> Any:
    step, rest = steps[0], steps[1:]

    def inner(item: Any) -> Any:
        return _replace_item(item, rest, fn) if rest else _map_levels(item, fn)

    if isinstance(output, Mapping) and step in output:
        new = OrderedDict(output) if isinstance(output, OrderedDict) else dict(output)
        new[step] = inner(output[step])
        return new if isinstance(output, (dict, OrderedDict)) else type(output)(new)  # type: ignore[call-arg]
    if isinstance(output, (list, tuple)) and isinstance(step, int) and -len(output) <= step < len(output):
        items = list(output)
        items[step] = inner(items[step])
        return output._make(items) if hasattr(output, "_make") else type(output)(items)
    raise ConfigError(f"avatars: the teacher module's output {type(output).__name__} has no item {step!r}")


class AvatarSwitch:
    """A forward hook on the point's teacher module that turns the teacher into Avatar k while ``use(k)`` is open.

    Outside ``use`` the teacher runs unchanged. Inside, the module's output (its ``key`` item, or
    every tensor of it: all FPN levels) is replaced by one draw of ``Avatars`` from Avatar k's own
    generator, so the rest of the teacher runs on the Avatar feature. While ``accumulate`` is on,
    the per-channel sums of ``(a - t)^2`` are kept per level, for the uncertainty factor.
    """

    def __init__(
        self,
        module: nn.Module,
        key: OutputKey | None,
        perturbation: str,
        p: float,
        generators: Sequence[torch.Generator],
    ) -> None:
        self.key = key
        self.avatars = [Avatars(1, perturbation, p, g) for g in generators]
        self.current: int | None = None
        self.accumulate = False
        self.sq_sum: dict[str, Tensor] = {}
        self.count: dict[str, int] = {}
        self._handle = module.register_forward_hook(self._hook)

    def _perturb(self, level: str, t: Tensor) -> Tensor:
        assert self.current is not None
        avatar = self.avatars[self.current](t)[0]
        if self.accumulate and t.dim() >= 2:
            dims = tuple(d for d in range(t.dim()) if d != 1)
            sq = (avatar.double() - t.double()).pow(2).sum(dims)
            self.sq_sum[level] = self.sq_sum[level] + sq if level in self.sq_sum else sq
            self.count[level] = self.count.get(level, 0) + t.numel() // t.shape[1]
        return avatar

    def _hook(self, _module: nn.Module, _inputs: Any, output: Any) -> Any:
        if self.current is None:
            return None
        return replace_levels(output, self.key, self._perturb)

    @contextmanager
    def use(self, k: int) -> Iterator[None]:
        self.current = k
        try:
            yield
        finally:
            self.current = None

    def variance(self) -> dict[str, Tensor]:
        """Level -> per-channel mean of ``(a_k - t)^2`` over the Avatars, images and positions seen."""
        return {level: (s / self.count[level]).float().cpu() for level, s in self.sq_sum.items()}

    def remove(self) -> None:
        self._handle.remove()


class AvatarEnsemble(nn.Module):
    """The K Avatars as one model: each runs the teacher under its own draw, the task merges the outputs."""

    def __init__(self, teacher: nn.Module, switch: AvatarSwitch, task: Task) -> None:
        super().__init__()
        self.teacher = teacher
        self.switch = switch
        self.task = task

    def forward(self, *args: Any) -> Any:
        outputs = []
        for k in range(len(self.switch.avatars)):
            with self.switch.use(k):
                outputs.append(self.teacher(*args))
        return self.task.ensemble(outputs)


def select_predictions(predictions: Sequence[Any], choice: Tensor) -> Any:
    """Per image i, ``predictions[choice[i]][i]``: a stacked tensor stays a tensor, lists stay lists."""
    first = predictions[0]
    if isinstance(first, Tensor):
        stacked = torch.stack(list(predictions))
        return stacked[choice.to(stacked.device), torch.arange(stacked.shape[1], device=stacked.device)]
    return [predictions[int(k)][i] for i, k in enumerate(choice.tolist())]


def sigma_of(mode: str, variance: Tensor) -> Tensor | None:
    """The per-channel sigma ``Uncertainty`` gives in ``mode`` for this variance (None: the mode keeps none)."""
    if mode not in ("variance", "relative"):
        return None
    factor = Uncertainty(mode)
    factor.update(variance.clone())
    factor.eval()
    return factor.sigma_from(lambda: variance)


# ----------------------------------------------------------------------------- the measurement
def _loader(task: Task, cfg: TrainConfig, dataset: Any) -> DataLoader:
    return DataLoader(
        dataset,
        batch_size=cfg.data.val_batch_size or cfg.data.batch_size,
        shuffle=False,
        collate_fn=task.collate,
        num_workers=cfg.data.num_workers,
    )


def _set_states(generators: Sequence[torch.Generator], states: Sequence[Tensor]) -> None:
    for g, s in zip(generators, states, strict=True):
        g.set_state(s)


@torch.no_grad()
def measure_point(
    task: Task,
    teacher: nn.Module,
    loader: DataLoader,
    device: torch.device,
    point: PointConfig,
    p: float,
    perturbation: str,
    seeds: Sequence[int],
    progress: tqdm | None = None,
) -> dict[str, Any]:
    """Single Avatars, their ensemble and the per-image oracle at one point and rate, in one pass.

    Per batch: each Avatar's predictions (its generator advancing as it would alone), then the
    ensemble from the same draws (the generators rewound to the batch's start), then the oracle's
    pick among the Avatars' predictions.
    """
    module = resolve_module(teacher, point.teacher or point.student, "teacher")
    generators = [torch.Generator(device=device).manual_seed(int(s)) for s in seeds]
    switch = AvatarSwitch(module, teacher_output_key(point), perturbation, p, generators)
    ensemble_model = AvatarEnsemble(teacher, switch, task)
    singles = [task.scorer() for _ in seeds]
    ensemble, oracle = task.scorer(), task.scorer()
    try:
        for batch in loader:
            if batch is None:
                continue
            batch = task.to_device(batch, device)
            start = [g.get_state() for g in generators]
            predictions = []
            switch.accumulate = True
            for k in range(len(seeds)):
                with switch.use(k):
                    predictions.append(task.predict(teacher, batch))
            switch.accumulate = False
            end = [g.get_state() for g in generators]
            _set_states(generators, start)
            ensemble.update(batch, task.predict(ensemble_model, batch))
            _set_states(generators, end)
            for scorer, pred in zip(singles, predictions, strict=True):
                scorer.update(batch, pred)
            scores = torch.stack([task.image_scores(batch, pred) for pred in predictions])  # (K, N)
            oracle.update(batch, select_predictions(predictions, scores.argmax(0)))
            if progress is not None:
                progress.update(1)
    finally:
        switch.remove()
    metric = task.primary_metric
    return {
        "avatars": [float(s.compute()[metric]) for s in singles],
        "ensemble": float(ensemble.compute()[metric]),
        "oracle": float(oracle.compute()[metric]),
        "variance": switch.variance(),
    }


def measure_avatars(
    cfg: TrainConfig,
    points: Sequence[str] | None = None,
    ps: Sequence[float] = DEFAULT_PS,
    num_avatars: int = DEFAULT_NUM_AVATARS,
    seed: int = 0,
    seeds: Sequence[int] | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """The measurement ``avatarkd avatars`` prints, as a JSON-ready dict (see the module docstring).

    ``seeds``: the Avatars' generator seeds (default ``seed * 1000 + k``); equal seeds give
    identical Avatars (what a test of the ensemble uses).
    """
    chosen = select_points(cfg, points)
    assert cfg.distill is not None and cfg.teacher is not None
    if num_avatars < 1:
        raise ConfigError(f"avatars: --num-avatars must be >= 1, got {num_avatars}")
    seeds = list(seeds) if seeds is not None else [seed * 1000 + k for k in range(num_avatars)]
    settings = {pc.name: pc.akd or cfg.distill.akd for pc in chosen}
    rates = {name: check_rates(ps, akd.perturbation) for name, akd in settings.items()}
    task = make_task(cfg)
    _, dataset = build_datasets(task, cfg)
    device = resolve_device(cfg.train.device)
    teacher = build_model(task, cfg.teacher, "teacher", device).eval().requires_grad_(False)
    loader = _loader(task, cfg, dataset)
    for pc in chosen:  # a wrong module path fails before the long passes
        resolve_module(teacher, pc.teacher or pc.student, "teacher")
    teacher_value = float(task.evaluate(teacher, loader, device)[task.primary_metric])
    log.info("teacher: %s = %.4f on %s", task.primary_metric, teacher_value, cfg.eval.split)
    total = sum(len(r) for r in rates.values()) * len(loader)
    rows = []
    with tqdm(total=total, desc="avatars", unit="batch", disable=not show_progress, leave=False) as bar:
        for pc in chosen:
            akd = settings[pc.name]
            for p in rates[pc.name]:
                bar.set_postfix_str(f"{pc.name} p={p:g}")
                found = measure_point(task, teacher, loader, device, pc, p, akd.perturbation, seeds, bar)
                sigma = {
                    level: (None if (s := sigma_of(akd.uncertainty, var)) is None else s.tolist())
                    for level, var in found.pop("variance").items()
                }
                rows.append(
                    {
                        "point": pc.name,
                        "p": p,
                        "teacher": teacher_value,
                        **found,
                        "perturbation": akd.perturbation,
                        "uncertainty": {"mode": akd.uncertainty, "sigma": sigma},
                    }
                )
    return {
        "task": cfg.task,
        "metric": task.primary_metric,
        "split": cfg.eval.split,
        "points": rows,
        "num_avatars": len(seeds),
        "seeds": list(seeds),
    }


# ----------------------------------------------------------------------------- reporting
def format_table(result: Mapping[str, Any]) -> str:
    """A Markdown table: one row per point and p (single Avatars as mean and min-max)."""
    metric = result["metric"]
    lines = [
        f"| point | p | teacher {metric} | single Avatar mean (min-max) | ensemble | oracle |",
        "|---|---|---|---|---|---|",
    ]
    for row in result["points"]:
        values = row["avatars"]
        mean = sum(values) / len(values)
        lines.append(
            f"| {row['point']} | {row['p']:g} | {row['teacher']:.4f} | {mean:.4f} ({min(values):.4f}-{max(values):.4f})"
            f" | {row['ensemble']:.4f} | {row['oracle']:.4f} |"
        )
    return "\n".join(lines)


def _by_point(result: Mapping[str, Any]) -> dict[str, list[dict[str, Any]]]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for row in result["points"]:
        groups.setdefault(row["point"], []).append(row)
    return {name: sorted(rows, key=lambda r: r["p"]) for name, rows in groups.items()}


def plot_capacity(result: Mapping[str, Any], out_png: Path | str) -> Path:
    """Metric vs p, one panel per point: teacher line, single-Avatar min-max band and mean, ensemble, oracle."""
    groups = _by_point(result)
    fig = Figure(figsize=(4.6 * len(groups), 3.6))
    for i, (name, rows) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), i + 1)
        ps = np.array([r["p"] for r in rows])
        singles = np.array([r["avatars"] for r in rows])
        ax.axhline(rows[0]["teacher"], color="k", lw=1.2, ls="--", label="teacher")
        ax.fill_between(ps, singles.min(1), singles.max(1), color="C0", alpha=0.25, lw=0, label="single Avatars")
        ax.plot(ps, singles.mean(1), "o-", color="C0", lw=1, ms=3)
        ax.plot(ps, [r["ensemble"] for r in rows], "s-", color="C1", label="ensemble")
        ax.plot(ps, [r["oracle"] for r in rows], "^-", color="C2", label="oracle (per image)")
        ax.set_title(f"{name} ({rows[0]['perturbation']})", fontsize=10)
        ax.set_xlabel("p")
        ax.set_ylabel(f"{result['metric']} ({result['split']})")
        ax.grid(alpha=0.3)
        if i == 0:
            ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)


def plot_sigmas(result: Mapping[str, Any], out_png: Path | str) -> Path | None:
    """The uncertainty factor's per-channel sigma at each p, sorted, one panel per point (all levels together).

    None when no point's mode keeps a per-channel sigma (``batchnorm``, ``none``).
    """
    groups = {
        name: rows
        for name, rows in _by_point(result).items()
        if any(v is not None for v in rows[0]["uncertainty"]["sigma"].values())
    }
    if not groups:
        return None
    fig = Figure(figsize=(4.6 * len(groups), 3.6))
    for i, (name, rows) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for j, row in enumerate(rows):
            values = np.concatenate([np.asarray(v) for v in row["uncertainty"]["sigma"].values() if v is not None])
            ax.plot(np.sort(values)[::-1], color=f"C{j % 10}", lw=1.2, label=f"p={row['p']:g}")
        ax.set_title(f"{name}: sigma ({rows[0]['uncertainty']['mode']})", fontsize=10)
        ax.set_xlabel("channel, sorted by sigma")
        ax.set_ylabel("sigma")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    return save_figure(fig, out_png)


def write_outputs(
    result: Mapping[str, Any], json_path: Path | None, plot_path: Path | None
) -> tuple[Path | None, Path | None, Path | None]:
    """The JSON, the capacity plot and the sigma plot (beside the capacity plot), each written atomically."""
    written_json = atomic_write_json(json_path, dict(result)) if json_path is not None else None
    if plot_path is None:
        return written_json, None, None
    sigma_png = plot_path.with_name(f"{plot_path.stem}_sigma{plot_path.suffix or '.png'}")
    return written_json, plot_capacity(result, plot_path), plot_sigmas(result, sigma_png)


__all__ = [
    "DEFAULT_PS",
    "AvatarEnsemble",
    "AvatarSwitch",
    "format_table",
    "measure_avatars",
    "measure_point",
    "parse_rates",
    "plot_capacity",
    "plot_sigmas",
    "replace_levels",
    "select_points",
    "select_predictions",
    "write_outputs",
]
