"""Task pictures: segmentation masks and detection boxes over the images they belong to.

Built on the generic helpers of ``avatarkd.plots`` (fixed class colours, atomic PNG writing).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Patch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from ..plots import class_color, class_name, save_figure, save_image

_IGNORE_COLOR = np.array([200, 200, 200], dtype=np.uint8)


# ----------------------------------------------------------------------------- segmentation


def _unit_rgb(color: np.ndarray) -> tuple[float, float, float]:
    """A uint8 RGB colour as matplotlib's (r, g, b) in [0, 1]."""
    return float(color[0]) / 255, float(color[1]) / 255, float(color[2]) / 255


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
        color = class_color(c).astype(np.float32)
        out[sel] = 0.4 * out[sel] + 0.6 * color
        out[sel & edge] = color
    return out.round().astype(np.uint8)


def plot_segmentation(
    images: Tensor,
    preds: Tensor,
    targets: Tensor | None,
    out_png: Path | str,
    class_names: Sequence[str] | None = None,
    ignore_index: int = 255,
    max_images: int = 8,
) -> Path:
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
    handles = [
        Patch(facecolor=_unit_rgb(class_color(c)), edgecolor="0.3", label=class_name(c, class_names))
        for c in sorted(present)
        if c not in (0, ignore_index)
    ]
    if ignore_index in present:
        handles.append(Patch(facecolor=_unit_rgb(_IGNORE_COLOR), edgecolor="0.3", label="ignored"))

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
        fig.legend(
            handles=handles,
            loc="upper center",
            ncol=ncol,
            fontsize=8,
            frameon=False,
            bbox_to_anchor=(0.5, bottom - 0.1 / height),
            handlelength=1.2,
            columnspacing=1.0,
        )
    return save_figure(fig, out_png)


# ----------------------------------------------------------------------------- detection
def _label_font_path() -> str | None:
    """A TrueType font that ships with matplotlib, so labels are crisp without system fonts."""
    try:
        from matplotlib import font_manager

        return font_manager.findfont(font_manager.FontProperties(family="DejaVu Sans"), fallback_to_default=True)
    except Exception:
        return None


def _clean_boxes(boxes: Tensor, scale: int, height: int, width: int) -> tuple[Tensor, Tensor]:
    """Boxes scaled to the upscaled image and clipped; returns them and the mask of drawable ones."""
    b = boxes.detach().float().cpu().reshape(-1, 4) * scale
    b[:, 0::2] = b[:, 0::2].clamp(0, width - 1)
    b[:, 1::2] = b[:, 1::2].clamp(0, height - 1)
    ok = (b[:, 2] >= b[:, 0]) & (b[:, 3] >= b[:, 1]) & torch.isfinite(b).all(dim=1)
    return b, ok


def _rgb(color: np.ndarray) -> tuple[int, int, int]:
    return int(color[0]), int(color[1]), int(color[2])


def _text_color(rgb: tuple[int, int, int]) -> tuple[int, int, int]:
    return (0, 0, 0) if 0.299 * rgb[0] + 0.587 * rgb[1] + 0.114 * rgb[2] > 140 else (255, 255, 255)


def _load_font(path: str | None, size: int) -> Any:
    try:
        return ImageFont.truetype(path, size) if path else ImageFont.load_default()
    except OSError:
        return ImageFont.load_default()


def _overlaps(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def _draw_labels(
    canvas: Tensor, boxes: Tensor, texts: list[str], colors: list[tuple[int, int, int]], font: Any
) -> Tensor:
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
    for box, text, color in zip(boxes.tolist(), texts, colors, strict=True):
        left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
        tw, th = right - left + 4, bottom - top + 3
        x = int(min(max(box[0], 0), max(w - tw, 0)))
        candidates = [box[1] - th, box[1] + 1, box[3] - th, box[3] + 1]
        rects = [(x, int(y), int(x + tw), int(y + th)) for y in candidates if 0 <= y and y + th <= h] or [
            (x, 0, int(x + tw), int(th))
        ]
        rect = next((r for r in rects if not any(_overlaps(r, q) for q in placed)), rects[0])
        placed.append(rect)
        spots.append((rect, text, color))
    for rect, text, color in reversed(spots):  # most confident last, on top
        draw.rectangle(rect, fill=color)
        left, top, _, _ = draw.textbbox((0, 0), text, font=font)
        draw.text((rect[0] + 2 - left, rect[1] + 1 - top), text, fill=_text_color(color), font=font)
    return torch.from_numpy(np.asarray(page).copy()).permute(2, 0, 1)


def plot_detections(
    images: Sequence[Tensor] | Tensor,
    predictions: Sequence[dict[str, Tensor]],
    targets: Sequence[dict[str, Tensor]] | None,
    out_png: Path | str,
    class_names: Sequence[str] | None = None,
    score_threshold: float = 0.3,
    max_images: int = 8,
) -> Path:
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
        labels = (
            pred["labels"].detach().cpu().reshape(-1).long()
            if "labels" in pred
            else torch.zeros(len(boxes), dtype=torch.long)
        )
        scores = pred["scores"].detach().cpu().reshape(-1).float() if "scores" in pred else None
        keep = ok & (scores >= score_threshold if scores is not None else torch.ones_like(ok))
        if keep.any():
            idx = keep.nonzero().flatten()
            if scores is not None:  # most confident first: they get the best label spots and are drawn on top
                idx = idx[scores[idx].argsort(descending=True)]
            cls = labels[idx].tolist()
            text = [
                class_name(c, class_names) + (f" {scores[k]:.2f}" if scores is not None else "")
                for c, k in zip(cls, idx.tolist(), strict=True)
            ]
            colors = [_rgb(class_color(c)) for c in cls]
            canvas = draw_bounding_boxes(canvas, boxes[idx].flip(0), colors=colors[::-1], width=2)
            canvas = _draw_labels(canvas, boxes[idx], text, colors, label_font)
        else:  # say so, or an empty tile reads as "the plot is broken"
            canvas = _draw_labels(
                canvas,
                torch.tensor([[0.0, 0.0, 0.0, 0.0]]),
                [f"no prediction >= {score_threshold:.2f}"],
                [(60, 60, 60)],
                label_font,
            )
        tiles.append(canvas)
    side_h = max(t.shape[-2] for t in tiles)
    side_w = max(t.shape[-1] for t in tiles)
    # images of different sizes share a cell size; the spare room is page-white, not image-black
    tiles = [torch.nn.functional.pad(t, (0, side_w - t.shape[-1], 0, side_h - t.shape[-2]), value=255) for t in tiles]
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
    return save_image(page, out_png)


__all__ = ["plot_detections", "plot_segmentation"]
