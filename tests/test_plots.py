"""Plots: every function writes a valid PNG atomically; the uncertainty map matches a hand computation."""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import pytest
import torch
from matplotlib.figure import Figure
from PIL import Image

from avatarkd.errors import DataError
from avatarkd.plots import plot_training_curves, plot_uncertainty
from avatarkd.tasks.drawing import plot_detections, plot_segmentation


def assert_png(path: Path, min_side: int = 16) -> Image.Image:
    assert path.is_file() and path.stat().st_size > 0
    with Image.open(path) as im:
        im.verify()  # a truncated file fails here
    im = Image.open(path)
    im.load()
    assert im.format == "PNG"
    assert im.mode in ("RGB", "RGBA")
    assert min(im.size) >= min_side
    return im


def no_temp_files(folder: Path) -> bool:
    return not [p for p in folder.iterdir() if p.name.startswith(".") or p.suffix == ".tmp"]


def write_log(path: Path) -> Path:
    rows = []
    for step in range(1, 41):
        rows.append(
            {
                "step": step,
                "epoch": step // 20,
                "loss": 5.0 * math.exp(-step / 4) + 0.01,
                "loss_task": 4.0 * math.exp(-step / 4),
                "distill_total": 0.2,
                "distill.fpn.0": 0.05,
                "distill.fpn.pool": 0.02,
                "lr": 0.01 * step / 40,
                "flag": True,
                "note": "x",
            }
        )
        if step % 10 == 0:
            rows.append({"step": step, "eval/miou": step / 100, "eval/iou/cat": None})
    text = "\n".join(json.dumps(r) for r in rows) + '\n{"step": 41, "loss": 0.'  # a line cut by a kill
    path.write_text(text)
    return path


# ----------------------------------------------------------------------------- training curves
def test_training_curves_png(tmp_path: Path) -> None:
    out = plot_training_curves(write_log(tmp_path / "metrics.jsonl"), tmp_path / "plots" / "curves.png")
    assert out == tmp_path / "plots" / "curves.png"
    assert_png(out, min_side=200)
    assert no_temp_files(out.parent)


def test_training_curves_keys_skip_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import avatarkd.plots

    figures: list[Figure] = []
    save = avatarkd.plots.save_figure
    monkeypatch.setattr(avatarkd.plots, "save_figure", lambda fig, out: figures.append(fig) or save(fig, out))
    with caplog.at_level(logging.INFO, logger="avatarkd.plots"):
        out = plot_training_curves(
            write_log(tmp_path / "m.jsonl"), tmp_path / "c.png", keys=["loss", "eval/miou", "nope"]
        )
    assert_png(out)
    (fig,) = figures
    # one panel per group of the keys that have values; a one-key panel names its key on the y axis
    assert [ax.get_title() for ax in fig.axes] == ["losses", "evaluation"]
    assert [ax.get_ylabel() for ax in fig.axes] == ["loss", "eval/miou"]
    lines = [line for ax in fig.axes for line in ax.get_lines()]
    assert {len(line.get_xdata()) for line in lines} == {40, 4}  # 40 loss steps (raw and EMA), 4 evaluations
    assert "no values for nope; skipped" in caplog.text


@pytest.mark.parametrize("content", [b"", b"\n\n", b"not json\n{broken", b"[1, 2]\n3\n", b"\xff\xfe\x00\x81garbage"])
def test_training_curves_unreadable_raises(tmp_path: Path, content: bytes) -> None:
    log = tmp_path / "m.jsonl"
    log.write_bytes(content)
    with pytest.raises(DataError) as err:
        plot_training_curves(log, tmp_path / "c.png")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "c.png").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.jsonl"]


def test_training_curves_missing_file_or_nothing_to_plot(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="cannot read"):
        plot_training_curves(tmp_path / "absent.jsonl", tmp_path / "c.png")
    log = tmp_path / "m.jsonl"
    log.write_text('{"step": 1, "epoch": 0}\n')
    with pytest.raises(DataError, match="nothing to plot"):
        plot_training_curves(log, tmp_path / "c.png")


def test_series_skip_non_numbers_and_coco_sentinel() -> None:
    from avatarkd.plots import _collect_series

    rows = [
        {"step": 1, "loss": 1.0, "flag": True, "note": "x", "lr": None},
        {"step": 2, "eval/map": 0.2, "eval/map_small": -1.0, "eval/iou/cat": 0.5},
    ]
    assert set(_collect_series(rows, None)) == {"loss", "eval/map"}
    assert _collect_series(rows, ["eval/iou/cat"]) == {"eval/iou/cat": ([2], [0.5])}


# ----------------------------------------------------------------------------- uncertainty
def test_plot_uncertainty_vectors_and_maps(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    sigmas = {
        "fpn.0": torch.rand(16, generator=g),
        "fpn.pool": torch.rand(300, generator=g).pow(4) + 1e-6,
        "layer4": torch.rand(8, 8, generator=g),
        "map": torch.rand(4, 6, 6, generator=g),
    }
    out = plot_uncertainty(sigmas, tmp_path / "u.png", title="sigma")
    assert_png(out, min_side=200)
    assert no_temp_files(tmp_path)
    with pytest.raises(ValueError, match="layer4"):
        plot_uncertainty({"layer4": torch.zeros(1, 2, 3, 4)}, tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


# ----------------------------------------------------------------------------- predictions
def test_plot_segmentation(tmp_path: Path) -> None:
    g = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=g)
    targets = torch.randint(0, 4, (3, 32, 32), generator=g)
    targets[:, :2] = 255
    preds = torch.randint(0, 4, (3, 16, 16), generator=g)  # output stride 2: resized to the image
    names = ["background", "a", "b", "c"]
    assert_png(plot_segmentation(images, preds, targets, tmp_path / "seg.png", class_names=names), min_side=100)
    assert_png(plot_segmentation(images, preds, None, tmp_path / "seg_nogt.png", max_images=1))
    assert no_temp_files(tmp_path)


def test_plot_detections(tmp_path: Path) -> None:
    images = [torch.rand(3, 64, 64), torch.rand(3, 64, 48), torch.rand(1, 64, 64)]
    preds = [
        {
            "boxes": torch.tensor([[4.0, 4, 30, 30], [10, 20, 60, 62]]),
            "labels": torch.tensor([1, 2]),
            "scores": torch.tensor([0.9, 0.1]),
        },
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long), "scores": torch.zeros(0)},
        {
            "boxes": torch.tensor([[5.0, 5, 2, 2], [-5, -5, 100, 100]]),
            "labels": torch.tensor([7, 3]),
            "scores": torch.tensor([0.8, 0.5]),
        },
    ]  # a degenerate box (skipped), one clipped to the image
    targets = [
        {"boxes": torch.tensor([[5.0, 5, 31, 29]]), "labels": torch.tensor([1])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.long)},
        {"boxes": torch.tensor([[0.0, 0, 63, 63]]), "labels": torch.tensor([3])},
    ]
    out = plot_detections(images, preds, targets, tmp_path / "det.png", class_names=["bg", "cat", "dog"])
    im = assert_png(out)
    assert im.height >= 256  # 64 px inputs are upscaled so labels are readable
    assert_png(plot_detections(torch.rand(1, 3, 64, 64), preds[:1], None, tmp_path / "det1.png"), min_side=256)
    assert no_temp_files(tmp_path)


# ----------------------------------------------------------------------------- atomic writes
def test_failed_write_keeps_old_png_and_leaves_no_temp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = plot_uncertainty({"fpn.0": torch.rand(8)}, tmp_path / "u.png")
    before = out.read_bytes()

    def broken_savefig(self: Figure, fname: object, **kwargs: object) -> None:
        fname.write(b"\x89PNG half")  # a binary file object: avatarkd.atomic's temporary file
        raise OSError("disk full")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(OSError, match="disk full"):
        plot_uncertainty({"fpn.0": torch.rand(8)}, out)
    assert out.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir()] == ["u.png"]
