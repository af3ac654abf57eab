"""Pictures a person would rather look at than read: training curves and AKD's uncertainty.

Everything here runs headless: figures are built with the object-oriented ``Figure`` API on an
Agg canvas, so importing this module never touches pyplot's global state or needs a display
(training nodes have none). Every PNG goes through ``avatarkd.atomic``, so a crash or a kill
mid-write never leaves half a picture behind and a reader (a browser refreshing ``curves.png``)
sees either the old or the new one. Task-specific drawing (masks, boxes) lives with the tasks.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor

from .atomic import atomic_write
from .errors import DataError

log = logging.getLogger(__name__)

DPI = 110
# a fixed palette so that "car" has the same colour in every picture of a run (Kelly/Trubetskoy
# colours, chosen to stay distinguishable); index 0 is the background and is never painted
_PALETTE = np.array(
    [
        [0, 0, 0],
        [230, 25, 75],
        [60, 180, 75],
        [255, 225, 25],
        [0, 130, 200],
        [245, 130, 48],
        [145, 30, 180],
        [70, 240, 240],
        [240, 50, 230],
        [210, 245, 60],
        [250, 190, 212],
        [0, 128, 128],
        [220, 190, 255],
        [170, 110, 40],
        [255, 250, 200],
        [128, 0, 0],
        [170, 255, 195],
        [128, 128, 0],
        [255, 215, 180],
        [0, 0, 128],
        [128, 128, 128],
    ],
    dtype=np.uint8,
)


def class_color(i: int) -> np.ndarray:
    """RGB of class ``i``: the palette first, then a deterministic hash so any class id works."""
    if 0 <= i < len(_PALETTE):
        return _PALETTE[i]
    return np.array([(i * 67 + 40) % 256, (i * 139 + 90) % 256, (i * 211 + 20) % 256], dtype=np.uint8)


def class_name(c: int, class_names: Sequence[str] | None) -> str:
    return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)


# ----------------------------------------------------------------------------- atomic output
def save_figure(fig: Figure, out_png: Path | str) -> Path:
    """A matplotlib figure as PNG, written atomically."""
    FigureCanvasAgg(fig)
    path = atomic_write(
        out_png, lambda f: fig.savefig(f, format="png", dpi=DPI, bbox_inches="tight", facecolor="white")
    )
    log.debug("wrote %s", path)
    return path


def save_image(image: Image.Image, out_png: Path | str) -> Path:
    """A PIL image as PNG, written atomically (pixel for pixel: no resampling)."""
    path = atomic_write(out_png, lambda f: image.save(f, format="PNG"))
    log.debug("wrote %s", path)
    return path


# ----------------------------------------------------------------------------- training curves
def read_jsonl(path: Path | str) -> list[dict[str, Any]]:
    """Rows of a JSON-lines metrics log; lines that are not a JSON object are skipped.

    A training run killed mid-write leaves a truncated last line, which must not make the whole
    log unplottable, so broken lines are dropped rather than fatal. A log with no usable row at
    all is a user-visible error (wrong path, wrong file) and raises ``DataError``.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as err:
        raise DataError(f"cannot read metrics log {path}: {err.strerror or err}") from None
    except UnicodeDecodeError:
        raise DataError(f"metrics log {path} is not UTF-8 text") from None
    rows = []
    for line in text.splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(row, dict):
            rows.append(row)
    if not rows:
        raise DataError(f"metrics log {path} holds no JSON rows")
    return rows


def _ema(values: Sequence[float], alpha: float) -> list[float]:
    out: list[float] = []
    acc: float | None = None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def _group_of(key: str) -> str | None:
    if key.startswith("distill."):
        return "distillation points"
    if key.startswith(("loss", "distill")):
        return "losses"
    if key.startswith("eval/"):
        return "evaluation"
    if key == "lr":
        return "learning rate"
    return None


def _collect_series(rows: list[dict[str, Any]], keys: Sequence[str] | None) -> dict[str, tuple[list[int], list[float]]]:
    """key -> (steps, values) of the finite numbers; non-numbers and NaN (logged as null) are skipped."""
    wanted = set(keys) if keys is not None else None
    series: dict[str, tuple[list[int], list[float]]] = {}
    for i, row in enumerate(rows):
        step = row.get("step", i)
        if isinstance(step, bool) or not isinstance(step, (int, float)):
            step = i
        for k, v in row.items():
            if k in ("step", "epoch") or isinstance(v, bool) or not isinstance(v, (int, float)):
                continue
            if wanted is not None and k not in wanted:
                continue
            # per-class IoUs would bury mIoU under dozens of lines: shown only when asked for by name
            if wanted is None and (k.startswith("eval/iou/") or k == "eval/predicted_classes"):
                continue
            if not math.isfinite(v):
                continue
            if k.startswith("eval/") and v == -1:
                continue  # COCO's "undefined" (e.g. mAP_small without small objects), not a score
            xs, ys = series.setdefault(k, ([], []))
            xs.append(int(step))
            ys.append(float(v))
    return series


def plot_training_curves(jsonl_path: Path | str, out_png: Path | str, keys: Sequence[str] | None = None) -> Path:
    """One panel per group of a metrics log: losses, distillation points, evaluation, learning rate.

    Losses are noisy step to step, so each is drawn raw (faint) under an EMA (bold); the trend is
    what a person looks for, the raw trace shows how noisy it is. A panel whose values are all
    positive and span more than two decades gets a log y axis, otherwise the late part of training
    is a flat line at the bottom. ``keys`` restricts the plot to those keys (missing ones are
    skipped; keys outside the known groups go to an "other" panel).
    """
    rows = read_jsonl(jsonl_path)
    series = _collect_series(rows, keys)
    if keys is not None:
        missing = [k for k in keys if k not in series]
        if missing:
            log.info("metrics log %s has no values for %s; skipped", jsonl_path, ", ".join(missing))
    order = ["losses", "distillation points", "evaluation", "learning rate", "other"]
    groups: dict[str, list[str]] = {g: [] for g in order}
    for k in sorted(series, key=lambda k: (not k.startswith("loss"), k)):  # "loss" leads its legend
        g = _group_of(k)
        if g is None:
            if keys is None:
                continue
            g = "other"
        groups[g].append(k)
    groups = {g: ks for g, ks in groups.items() if ks}
    if not groups:
        raise DataError(f"metrics log {jsonl_path} holds nothing to plot (no loss, eval/ or lr values)")

    n = len(groups)
    cols = 1 if n == 1 else 2
    rows_n = math.ceil(n / cols)
    fig = Figure(figsize=(6.0 * cols, 3.8 * rows_n))
    first: Axes | None = None
    for i, (title, ks) in enumerate(groups.items()):
        # one step axis for all panels, so an eval point lines up with the losses around it
        ax = fig.add_subplot(rows_n, cols, i + 1, sharex=first)
        first = first or ax
        _plot_group(ax, title, ks, series)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    fig.tight_layout()
    return save_figure(fig, out_png)


def _plot_group(ax: Axes, title: str, ks: list[str], series: dict[str, tuple[list[int], list[float]]]) -> None:
    smooth = title in ("losses", "distillation points")
    for j, k in enumerate(ks):
        xs, ys = series[k]
        color = f"C{j % 10}"
        if smooth and len(ys) > 5:
            # lighter smoothing for short logs, so a 50-step run is not turned into a straight line
            alpha = min(0.3, max(0.02, 30.0 / len(ys)))
            ax.plot(xs, ys, color=color, alpha=0.2, lw=0.8)
            ax.plot(xs, _ema(ys, alpha), color=color, lw=1.8, label=k)
        else:
            ax.plot(xs, ys, color=color, lw=1.8, label=k, marker="o" if len(ys) <= 30 else None, ms=4)
    values = [y for k in ks for y in series[k][1]]
    if values and min(values) > 0 and max(values) / min(values) > 100:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3, which="both" if ax.get_yscale() == "log" else "major")
    if len(ks) > 1:
        ax.legend(fontsize=8, loc="best", ncol=2 if len(ks) > 6 else 1, framealpha=0.8)
    else:
        ax.set_ylabel(ks[0])
    if title == "learning rate":
        ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))


# ----------------------------------------------------------------------------- uncertainty
def _fmt(x: float) -> str:
    return f"{x:.3g}"


def _plot_sigma_vector(ax: Axes, name: str, v: np.ndarray) -> None:
    s = np.sort(v[np.isfinite(v)])[::-1]
    ax.set_title(name, fontsize=10)
    if s.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        ax.set_xticks([])
        ax.set_yticks([])
        return
    x = np.arange(len(s))
    if len(s) <= 64:
        ax.bar(x, s, width=0.8, color="C0")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    else:  # thousands of 1-px bars alias badly; a filled step curve reads the same and renders cleanly
        ax.fill_between(x, s, step="mid", color="C0", alpha=0.35, lw=0)
        ax.step(x, s, where="mid", color="C0", lw=1.2)
        ax.set_xlim(-0.5, len(s) - 0.5)
    lo, hi = float(s[-1]), float(s[0])
    if lo > 0 and hi / lo > 100:
        ax.set_yscale("log")
    spread = f"max/min {_fmt(hi / lo)}" if lo > 0 else f"min {_fmt(lo)}"
    ax.text(
        0.97,
        0.95,
        f"C={len(s)}\nmedian {_fmt(float(np.median(s)))}\n{spread}",
        transform=ax.transAxes,
        ha="right",
        va="top",
        fontsize=8,
        bbox={"boxstyle": "round", "fc": "white", "ec": "0.8", "alpha": 0.85},
    )
    ax.set_xlabel("channel, sorted by sigma", fontsize=9)
    ax.set_ylabel("sigma", fontsize=9)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3, axis="y")


def _plot_sigma_map(fig: Figure, ax: Axes, name: str, m: np.ndarray, channels: int | None) -> None:
    im = ax.imshow(m, cmap="magma", interpolation="nearest")
    cb = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    cb.ax.tick_params(labelsize=8)
    finite = m[np.isfinite(m)]
    stats = [f"mean over {channels} channels" if channels else ""]
    stats.append(f"average {_fmt(float(finite.mean()))}" if finite.size else "no finite values")
    ax.set_title(f"{name}\n" + ", ".join(x for x in stats if x), fontsize=9)
    ax.set_xticks([])
    ax.set_yticks([])


def plot_uncertainty(sigmas: dict[str, Tensor], out_png: Path | str, title: str | None = None) -> Path:
    """One panel per distillation level: how uncertain the Avatars are, and where.

    A per-channel sigma vector (C,) is drawn sorted descending, because what matters is the
    spread (a few channels the student should not copy vs. a flat profile), not channel order.
    A spatial map (H, W), or (C, H, W) averaged over C, is drawn as an image with a colour bar.
    """
    if not sigmas:
        raise ValueError("plot_uncertainty needs at least one level")
    for name, value in sigmas.items():
        if not 1 <= value.dim() <= 3 or value.numel() == 0:
            raise ValueError(
                f"uncertainty of level {name!r} must be (C,), (H, W) or (C, H, W), got shape {tuple(value.shape)}"
            )
    n = len(sigmas)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.4 * cols, 3.4 * rows + (0.4 if title else 0)))
    for i, (name, value) in enumerate(sigmas.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        v = value.detach().float().cpu()
        if v.dim() == 1:
            _plot_sigma_vector(ax, name, v.numpy())
        else:
            channels = v.shape[0] if v.dim() == 3 else None
            _plot_sigma_map(fig, ax, name, (v.mean(0) if v.dim() == 3 else v).numpy(), channels)
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return save_figure(fig, out_png)


__all__ = [
    "class_color",
    "class_name",
    "plot_training_curves",
    "plot_uncertainty",
    "read_jsonl",
    "save_figure",
    "save_image",
]
