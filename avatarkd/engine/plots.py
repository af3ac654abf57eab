"""Pictures a person would rather look at than read: curves, uncertainty, predictions.

Headless (Agg canvas); every PNG is written to a temp file and renamed, so a crash never leaves
half a picture behind.
"""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from torch import Tensor

from ..errors import DataError

_PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                     [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60], [250, 190, 212],
                     [0, 128, 128], [220, 190, 255], [170, 110, 40], [255, 250, 200], [128, 0, 0]], dtype=np.uint8)


def _color(i: int) -> np.ndarray:
    return _PALETTE[i % len(_PALETTE)] if i < len(_PALETTE) else np.array(
        [(i * 67) % 256, (i * 139) % 256, (i * 211) % 256], dtype=np.uint8)


def _save(fig: Figure, out_png: Path) -> Path:
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fd, tmp = tempfile.mkstemp(prefix=f".{out_png.stem}.", suffix=".png", dir=out_png.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
        os.replace(tmp, out_png)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return out_png


def _ema(values: list[float], alpha: float = 0.2) -> list[float]:
    out, acc = [], None
    for v in values:
        acc = v if acc is None else (1 - alpha) * acc + alpha * v
        out.append(acc)
    return out


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    path = Path(path)
    try:
        lines = path.read_text().splitlines()
    except OSError as err:
        raise DataError(f"cannot read metrics log {path}: {err}") from None
    rows = []
    for line in lines:
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line cut short by a kill
    if not rows:
        raise DataError(f"metrics log {path} holds no rows")
    return rows


def plot_training_curves(jsonl_path: Path, out_png: Path, keys: list[str] | None = None) -> Path:
    """Losses (raw faint, EMA bold; log scale when they span > 2 decades), eval metrics, learning rate."""
    rows = read_jsonl(jsonl_path)
    series: dict[str, tuple[list[int], list[float]]] = {}
    for r in rows:
        for k, v in r.items():
            if k in ("step", "epoch") or not isinstance(v, (int, float)) or (keys and k not in keys):
                continue
            if k.startswith("eval/iou/"):
                continue
            xs, ys = series.setdefault(k, ([], []))
            xs.append(int(r.get("step", len(xs))))
            ys.append(float(v))
    groups = {
        "losses": [k for k in series if k.startswith(("loss", "distill_total"))],
        "distillation points": [k for k in series if k.startswith("distill.")],
        "evaluation": [k for k in series if k.startswith("eval/")],
        "learning rate": [k for k in series if k == "lr"],
    }
    groups = {g: ks for g, ks in groups.items() if ks}
    fig = Figure(figsize=(5.5 * len(groups), 4.0))
    for i, (title, ks) in enumerate(groups.items()):
        ax = fig.add_subplot(1, len(groups), i + 1)
        for j, k in enumerate(sorted(ks)):
            xs, ys = series[k]
            color = f"C{j % 10}"
            if title in ("losses", "distillation points") and len(ys) > 3:
                ax.plot(xs, ys, color=color, alpha=0.25, lw=1)
                ax.plot(xs, _ema(ys), color=color, lw=1.8, label=k)
            else:
                ax.plot(xs, ys, color=color, marker="o" if len(ys) < 20 else None, lw=1.8, label=k)
        positive = [y for k in ks for y in series[k][1] if y > 0]
        if title != "evaluation" and positive and len(positive) == sum(len(series[k][1]) for k in ks):
            if max(positive) / min(positive) > 100:
                ax.set_yscale("log")
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.tight_layout()
    return _save(fig, out_png)


def uncertainty_maps(teacher_feat: Tensor, avatars: Tensor) -> Tensor:
    """E over avatars of (a_k - t)^2, mean over channels: where the Avatars disagree, (N, H, W)."""
    return (avatars - teacher_feat.unsqueeze(0)).pow(2).mean(dim=(0, 2))


def plot_uncertainty(sigmas: dict[str, Tensor], out_png: Path, title: str | None = None) -> Path:
    """Per level: sorted per-channel sigma (1-D input) or a spatial uncertainty map (2-D / 3-D)."""
    if not sigmas:
        raise ValueError("plot_uncertainty needs at least one level")
    n = len(sigmas)
    cols = min(n, 3)
    rows = math.ceil(n / cols)
    fig = Figure(figsize=(4.2 * cols, 3.2 * rows))
    for i, (name, value) in enumerate(sigmas.items()):
        ax = fig.add_subplot(rows, cols, i + 1)
        v = value.detach().float().cpu()
        if v.dim() == 1:
            s = v.sort(descending=True).values.numpy()
            ax.bar(np.arange(len(s)), s, width=1.0, color="C0")
            ax.set_xlabel(f"channel (sorted), C={len(s)}")
            ax.set_ylabel("sigma")
            ax.set_title(f"{name}: median {np.median(s):.3g}, max/min {s[0] / max(s[-1], 1e-12):.1f}", fontsize=9)
        else:
            m = v.mean(0) if v.dim() == 3 else v
            im = ax.imshow(m.numpy(), cmap="magma")
            fig.colorbar(im, ax=ax, fraction=0.046)
            ax.set_title(name, fontsize=9)
            ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    return _save(fig, out_png)


def _to_uint8(images: Tensor) -> np.ndarray:
    return (images.detach().float().clamp(0, 1).permute(0, 2, 3, 1).cpu().numpy() * 255).astype(np.uint8)


def _overlay(image: np.ndarray, labels: np.ndarray, ignore_index: int) -> np.ndarray:
    out = image.astype(np.float32).copy()
    for c in np.unique(labels):
        if c == 0 or c == ignore_index:
            continue
        sel = labels == c
        out[sel] = 0.35 * out[sel] + 0.65 * _color(int(c))
    return out.astype(np.uint8)


def plot_segmentation(images: Tensor, preds: Tensor, targets: Tensor | None, out_png: Path,
                      class_names: list[str] | None = None, ignore_index: int = 255, max_images: int = 8) -> Path:
    """Rows: image | prediction overlay | ground truth overlay, with a class legend."""
    n = min(len(images), max_images)
    imgs, p = _to_uint8(images[:n]), preds[:n].cpu().numpy()
    t = targets[:n].cpu().numpy() if targets is not None else None
    cols = 3 if t is not None else 2
    fig = Figure(figsize=(2.2 * cols, 2.2 * n + 0.6))
    for i in range(n):
        panels = [("image", imgs[i]), ("prediction", _overlay(imgs[i], p[i], ignore_index))]
        if t is not None:
            panels.append(("ground truth", _overlay(imgs[i], t[i], ignore_index)))
        for j, (name, arr) in enumerate(panels):
            ax = fig.add_subplot(n, cols, i * cols + j + 1)
            ax.imshow(arr, interpolation="nearest")
            ax.axis("off")
            if i == 0:
                ax.set_title(name, fontsize=9)
    present = sorted({int(c) for c in np.unique(p)} | ({int(c) for c in np.unique(t)} if t is not None else set()))
    present = [c for c in present if c not in (0, ignore_index)]
    if present:
        from matplotlib.patches import Patch

        handles = [Patch(color=_color(c) / 255, label=class_names[c] if class_names and c < len(class_names) else str(c))
                   for c in present]
        fig.legend(handles=handles, loc="lower center", ncol=min(4, len(handles)), fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.06, 1, 1))
    return _save(fig, out_png)


def plot_detections(images: list[Tensor] | Tensor, predictions: list[dict[str, Tensor]],
                    targets: list[dict[str, Tensor]] | None, out_png: Path, class_names: list[str] | None = None,
                    score_threshold: float = 0.3, max_images: int = 8) -> Path:
    """Predicted boxes (coloured by class, 'name score') over white ground-truth boxes, upscaled."""
    from torchvision.utils import draw_bounding_boxes, make_grid

    n = min(len(images), max_images)
    tiles = []
    for i in range(n):
        img = images[i].detach().float().clamp(0, 1).cpu()
        scale = max(1, math.ceil(256 / max(img.shape[-2:])))
        img = torch.nn.functional.interpolate(img[None], scale_factor=scale, mode="nearest")[0]
        canvas = (img * 255).to(torch.uint8)
        if targets is not None and len(targets[i]["boxes"]):
            canvas = draw_bounding_boxes(canvas, targets[i]["boxes"].float() * scale, colors="white", width=1)
        pred = predictions[i]
        keep = pred["scores"] >= score_threshold
        if keep.any():
            labels = pred["labels"][keep].tolist()
            names = [class_names[c] if class_names and c < len(class_names) else str(c) for c in labels]
            text = [f"{nm} {s:.2f}" for nm, s in zip(names, pred["scores"][keep].tolist())]
            colors = [tuple(int(x) for x in _color(c)) for c in labels]
            canvas = draw_bounding_boxes(canvas, pred["boxes"][keep].float() * scale, labels=text, colors=colors, width=2)
        tiles.append(canvas)
    side = max(t.shape[-1] for t in tiles)
    tiles = [torch.nn.functional.pad(t, (0, side - t.shape[-1], 0, side - t.shape[-2])) for t in tiles]
    grid = make_grid(torch.stack(tiles), nrow=min(4, n), padding=4, pad_value=40)
    fig = Figure(figsize=(grid.shape[2] / 110, grid.shape[1] / 110 + 0.3))
    ax = fig.add_subplot(1, 1, 1)
    ax.imshow(grid.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.axis("off")
    ax.set_title(f"predictions (score >= {score_threshold}); ground truth in white", fontsize=9)
    return _save(fig, out_png)
