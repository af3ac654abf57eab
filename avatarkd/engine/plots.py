"""Pictures a person would rather look at than read: curves, uncertainty, predictions.

Everything here runs headless: figures are built with the object-oriented ``Figure`` API on an
Agg canvas, so importing this module never touches pyplot's global state or needs a display
(training nodes have none). Every PNG is written to a temporary file in the destination folder
and renamed over the target, so a crash or a kill mid-write never leaves half a picture behind
and a reader (a browser refreshing ``curves.png``) sees either the old or the new one.
"""

from __future__ import annotations

import json
import logging
import math
import os
import secrets
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.axes import Axes
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from matplotlib.ticker import MaxNLocator
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..errors import DataError

log = logging.getLogger(__name__)

_DPI = 110
# a fixed palette so that "car" has the same colour in every picture of a run (Kelly/Trubetskoy
# colours, chosen to stay distinguishable); index 0 is the background and is never painted
_PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                     [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0],
                     [170, 255, 195], [128, 128, 0], [255, 215, 180], [0, 0, 128], [128, 128, 128]], dtype=np.uint8)
_IGNORE_COLOR = np.array([200, 200, 200], dtype=np.uint8)


def _color(i: int) -> np.ndarray:
    """RGB of class ``i``: the palette first, then a deterministic hash so any class id works."""
    if 0 <= i < len(_PALETTE):
        return _PALETTE[i]
    return np.array([(i * 67 + 40) % 256, (i * 139 + 90) % 256, (i * 211 + 20) % 256], dtype=np.uint8)


def _class_name(c: int, class_names: Sequence[str] | None) -> str:
    return class_names[c] if class_names is not None and 0 <= c < len(class_names) else str(c)


# ----------------------------------------------------------------------------- atomic output
def _atomic_png(out_png: Path | str, write: Callable[[Path], None]) -> Path:
    """Run ``write(tmp)`` then rename ``tmp`` over ``out_png``; the temp file never outlives a failure.

    The temp file is created with ``open(..., "xb")`` rather than ``mkstemp`` so that it gets the
    usual umask permissions (mkstemp's 0600 would make plots unreadable to the rest of a team).
    """
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    tmp = out_png.parent / f".{out_png.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"
    try:
        with open(tmp, "xb"):
            pass
        write(tmp)
        os.replace(tmp, out_png)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.debug("wrote %s", out_png)
    return out_png


def _save_figure(fig: Figure, out_png: Path | str) -> Path:
    FigureCanvasAgg(fig)
    return _atomic_png(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=_DPI, bbox_inches="tight",
                                                        facecolor="white"))


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
            if wanted is None and k.startswith("eval/iou/"):
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
    return _save_figure(fig, out_png)


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
def uncertainty_maps(teacher_feat: Tensor, avatars: Tensor) -> Tensor:
    """Where the Avatars disagree with the teacher: E_k[(a_k - t)^2] averaged over channels, (N, H, W).

    This is the paper's per-position uncertainty map: positions where perturbed teachers (Avatars)
    move far from the teacher are the ones whose features the student should trust less.
    ``teacher_feat`` is (N, C, H, W) and ``avatars`` is (K, N, C, H, W), K Avatars of it.
    """
    if teacher_feat.dim() != 4:
        raise ValueError(f"teacher_feat must be (N, C, H, W), got shape {tuple(teacher_feat.shape)}")
    if avatars.dim() != 5 or avatars.shape[1:] != teacher_feat.shape:
        raise ValueError(f"avatars must be (K, {', '.join(map(str, teacher_feat.shape))}), "
                         f"got shape {tuple(avatars.shape)}")
    return (avatars - teacher_feat.unsqueeze(0)).pow(2).mean(dim=(0, 2))


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
    ax.text(0.97, 0.95, f"C={len(s)}\nmedian {_fmt(float(np.median(s)))}\n{spread}", transform=ax.transAxes,
            ha="right", va="top", fontsize=8, bbox={"boxstyle": "round", "fc": "white", "ec": "0.8", "alpha": 0.85})
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
            raise ValueError(f"uncertainty of level {name!r} must be (C,), (H, W) or (C, H, W), "
                             f"got shape {tuple(value.shape)}")
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
    return _save_figure(fig, out_png)


# ----------------------------------------------------------------------------- segmentation
def _to_uint8_hwc(images: Tensor) -> np.ndarray:
    """(N, C, H, W) float in [0, 1] or uint8 -> (N, H, W, 3) uint8; grey images become RGB."""
    x = images.detach().cpu()
    x = x.float().div(255) if x.dtype == torch.uint8 else x.float()
    if x.shape[1] == 1:
        x = x.expand(-1, 3, -1, -1)
    return (x[:, :3].clamp(0, 1).permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)


def _resize_labels(labels: Tensor, size: tuple[int, int]) -> Tensor:
    """Nearest resize of (N, H, W) class ids, for models whose output stride leaves a smaller mask."""
    if tuple(labels.shape[-2:]) == size:
        return labels
    return torch.nn.functional.interpolate(labels[:, None].float(), size=size, mode="nearest")[:, 0].long()


def _overlay(image: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
    """Classes tinted over the image with a solid outline; background left as is, ignore greyed."""
    out = image.astype(np.float32)
    edge = np.zeros(labels.shape, dtype=bool)
    edge[:, :-1] |= labels[:, :-1] != labels[:, 1:]
    edge[:, 1:] |= labels[:, :-1] != labels[:, 1:]
    edge[:-1, :] |= labels[:-1, :] != labels[1:, :]
    edge[1:, :] |= labels[:-1, :] != labels[1:, :]
    for c in np.unique(labels):
        c = int(c)
        if c == 0:
            continue
        sel = labels == c
        if c == ignore_index:
            out[sel] = 0.4 * out[sel] + 0.6 * _IGNORE_COLOR
            continue
        color = _color(c).astype(np.float32)
        out[sel] = 0.4 * out[sel] + 0.6 * color
        out[sel & edge] = color
    return out.round().astype(np.uint8)


def plot_segmentation(images: Tensor, preds: Tensor, targets: Tensor | None, out_png: Path | str,
                      class_names: Sequence[str] | None = None, ignore_index: int = 255,
                      max_images: int = 8) -> Path:
    """Rows of image | prediction | ground truth, classes in fixed colours, legend of the classes shown.

    ``images`` is (N, 3, H, W) in [0, 1]; ``preds`` and ``targets`` are (N, H, W) class ids.
    Background (class 0) is left untinted so the picture stays readable; ``ignore_index`` pixels
    are greyed, so a person can tell "predicted background" from "not labelled".
    """
    n = min(len(images), len(preds), max_images)
    if n == 0:
        raise ValueError("plot_segmentation needs at least one image")
    imgs = _to_uint8_hwc(images[:n])
    size = (imgs.shape[1], imgs.shape[2])
    p = _resize_labels(preds[:n].detach().cpu().long(), size).numpy()
    t = _resize_labels(targets[:n].detach().cpu().long(), size).numpy() if targets is not None else None
    cols = 3 if t is not None else 2
    present = {int(c) for c in np.unique(p)} | ({int(c) for c in np.unique(t)} if t is not None else set())
    handles = [Patch(facecolor=_color(c) / 255, edgecolor="0.3", label=_class_name(c, class_names))
               for c in sorted(present) if c not in (0, ignore_index)]
    if ignore_index in present:
        handles.append(Patch(facecolor=_IGNORE_COLOR / 255, edgecolor="0.3", label="ignored"))

    panel = 2.3  # inches per image column; rows follow the image aspect so wide images leave no gaps
    row_h = panel * size[0] / size[1] + 0.1
    width = panel * cols
    ncol = max(1, min(len(handles), int(width // 1.5)))
    legend_h = (0.28 * math.ceil(len(handles) / ncol) + 0.15) if handles else 0.0
    height = row_h * n + 0.35 + legend_h
    fig = Figure(figsize=(width, height))
    for i in range(n):
        panels = [("image", imgs[i]), ("prediction", _overlay(imgs[i], p[i], ignore_index))]
        if t is not None:
            panels.append(("ground truth", _overlay(imgs[i], t[i], ignore_index)))
        for j, (name, arr) in enumerate(panels):
            ax = fig.add_subplot(n, cols, i * cols + j + 1)
            ax.imshow(arr, interpolation="nearest")
            ax.axis("off")
            if i == 0:
                ax.set_title(name, fontsize=10)
    fig.tight_layout(rect=(0, legend_h / height, 1, 1), h_pad=0.4, w_pad=0.4)
    if handles:
        # hang the legend right under the last row of images (square images leave vertical slack
        # in their cells, which would otherwise become a gap; bbox_inches="tight" trims the rest)
        for ax in fig.axes:
            ax.apply_aspect()
        bottom = min(ax.get_position().y0 for ax in fig.axes)
        fig.legend(handles=handles, loc="upper center", ncol=ncol, fontsize=8, frameon=False,
                   bbox_to_anchor=(0.5, bottom - 0.1 / height), handlelength=1.2, columnspacing=1.0)
    return _save_figure(fig, out_png)


# ----------------------------------------------------------------------------- detection
def _label_font_path() -> str | None:
    """A TrueType font that ships with matplotlib, so labels are crisp without system fonts."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    except Exception:  # noqa: BLE001 - a missing font degrades the labels, never the plot
        return None


def _clean_boxes(boxes: Tensor, scale: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Boxes scaled to the upscaled image and clipped; returns them and the mask of drawable ones."""
    b = boxes.detach().float().cpu().reshape(-1, 4) * scale
    b[:, 0::2] = b[:, 0::2].clamp(0, width - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, height - 1)
    ok = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1]) & torch.isfinite(b).all(dim=1)
    return b, ok


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)


def _load_font(path: str | None, size: int) -> Any:
    try:
        return ImageFont.truetype(path, size) if path else ImageFont.load_default()
    except OSError:
        return ImageFont.load_default()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_labels(canvas: Tensor, boxes: Tensor, texts: list[str], colors: list[tuple[int, int, int]],
                 font: Any) -> Tensor:
    """Box labels that stay inside the image and avoid each other where they can.

    torchvision pins a label to the inside top-left corner of its box, which runs off the image
    for boxes at the right edge and piles labels up for overlapping boxes. Here each label tries,
    in order: above the box, inside its top, inside its bottom, below it; shifted left to fit the
    image, taking the first spot no earlier (more confident) label occupies.
    """
    page = Image.fromarray(canvas.permute(1, 2, 0).numpy())
    draw = ImageDraw.Draw(page)
    h, w = page.height, page.width
    placed: list[tuple[int, int, int, int]] = []
    spots: list[tuple[tuple[int, int, int, int], str, tuple[int, int, int]]] = []
    for box, text, color in zip(boxes.tolist(), texts, colors):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 3
        x = int(min(max(box[0], 0), max(w - tw, 0)))
        candidates = [box[1] - th, box[1] + 1, box[3] - th, box[3] + 1]
        rects = [(x, int(y), x + tw, int(y) + th) for y in candidates if 0 <= y and y + th <= h] or [(x, 0, x + tw, th)]
        rect = next((r for r in rects if not any(_overlaps(r, q) for q in placed)), rects[0])
        placed.append(rect)
        spots.append((rect, text, color))
    for rect, text, color in reversed(spots):  # most confident last, on top
        draw.rectangle(rect, fill=color)
        left, top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((rect[0] + 2 - left, rect[1] + 1 - top), text, fill=_text_color(color), font=font)
    return torch.from_numpy(np.asarray(page).copy()).permute(2, 0, 1)


def plot_detections(images: Sequence[Tensor] | Tensor, predictions: Sequence[dict[str, Tensor]],
                    targets: Sequence[dict[str, Tensor]] | None, out_png: Path | str,
                    class_names: Sequence[str] | None = None, score_threshold: float = 0.3,
                    max_images: int = 8) -> Path:
    """A grid of images with predicted boxes (class colour, "name 0.87") over ground truth (white).

    Detection inputs are often tiny (64 px), where box labels would be a few unreadable pixels,
    so each image is upscaled by an integer factor (nearest, no blur) to at least 256 px before
    drawing. Boxes are drawn with ``torchvision.utils.draw_bounding_boxes``; ground truth in white
    on a black outline, visible on any background. Labels are placed by ``_draw_labels`` so that
    they stay readable. The grid is written pixel for pixel with PIL: going through a matplotlib
    axes would resample, and blur, the text.
    """
    from torchvision.utils import draw_bounding_boxes, make_grid

    n = min(len(images), len(predictions), max_images)
    if n == 0:
        raise ValueError("plot_detections needs at least one image")
    font_path = _label_font_path()
    label_font = _load_font(font_path, 13)
    tiles = []
    for i in range(n):
        img = images[i].detach().cpu()
        img = img.float().div(255) if img.dtype == torch.uint8 else img.float()
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)
        scale = max(1, math.ceil(256 / max(img.shape[-2:])))
        img = torch.nn.functional.interpolate(img[None, :3], scale_factor=scale, mode="nearest")[0]
        canvas = (img.clamp(0, 1) * 255).round().to(torch.uint8)
        h, w = canvas.shape[-2:]
        if targets is not None and i < len(targets) and len(targets[i].get("boxes", ())):
            gt, ok = _clean_boxes(targets[i]["boxes"], scale, h, w)
            if ok.any():
                canvas = draw_bounding_boxes(canvas, gt[ok], colors="black", width=3)
                canvas = draw_bounding_boxes(canvas, gt[ok], colors="white", width=1)
        pred = predictions[i]
        boxes, ok = _clean_boxes(pred["boxes"], scale, h, w)
        labels = (pred["labels"].detach().cpu().reshape(-1).long() if "labels" in pred
                  else torch.zeros(len(boxes), dtype=torch.long))
        scores = pred["scores"].detach().cpu().reshape(-1).float() if "scores" in pred else None
        keep = ok & (scores >= score_threshold if scores is not None else torch.ones_like(ok))
        if keep.any():
            idx = keep.nonzero().flatten()
            if scores is not None:  # most confident first: they get the best label spots and are drawn on top
                idx = idx[scores[idx].argsort(descending=True)]
            cls = labels[idx].tolist()
            text = [_class_name(c, class_names) + (f" {scores[k]:.2f}" if scores is not None else "")
                    for c, k in zip(cls, idx.tolist())]
            colors = [tuple(int(x) for x in _color(c)) for c in cls]
            canvas = draw_bounding_boxes(canvas, boxes[idx].flip(0), colors=colors[::-1], width=2)
            canvas = _draw_labels(canvas, boxes[idx], text, colors, label_font)
        else:  # say so, or an empty tile reads as "the plot is broken"
            canvas = _draw_labels(canvas, torch.tensor([[0.0, 0.0, 0.0, 0.0]]),
                                  [f"no prediction >= {score_threshold:.2f}"], [(60, 60, 60)], label_font)
        tiles.append(canvas)
    side_h = max(t.shape[-2] for t in tiles)
    side_w = max(t.shape[-1] for t in tiles)
    # images of different sizes share a cell size; the spare room is page-white, not image-black
    tiles = [torch.nn.functional.pad(t, (0, side_w - t.shape[-1], 0, side_h - t.shape[-2]), value=255)
             for t in tiles]
    grid = make_grid(torch.stack(tiles), nrow=min(4, n), padding=6, pad_value=255)
    body = Image.fromarray(grid.permute(1, 2, 0).numpy())

    caption = f"predictions with score >= {score_threshold:.2f} (coloured by class)"
    if targets is not None:
        caption += "; ground truth: white"
    cap_font = _load_font(font_path, 14)
    # one image alone is narrower than the caption: widen the page rather than cut the text
    text_w = math.ceil(ImageDraw.Draw(Image.new("RGB", (1, 1))).textlength(caption, font=cap_font))
    header = 26
    page = Image.new("RGB", (max(body.width, text_w + 16), body.height + header), "white")
    page.paste(body, ((page.width - body.width) // 2, header))
    ImageDraw.Draw(page).text((8, 5), caption, fill=(30, 30, 30), font=cap_font)
    return _atomic_png(out_png, lambda tmp: page.save(tmp, format="PNG"))


__all__ = [
    "plot_detections",
    "plot_segmentation",
    "plot_training_curves",
    "plot_uncertainty",
    "read_jsonl",
    "uncertainty_maps",
]
