"""Metrics against hand-computed golden values and against pycocotools run directly."""

from __future__ import annotations

import contextlib
import io
import json
import math
import os
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from PIL import Image
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from avatarkd.data import CocoDetection
from avatarkd.metrics import CocoEvaluator, SegmentationMetric, Top1Accuracy

# ----------------------------------------------------------------------------- segmentation
# pairs (target, pred) outside the ignored pixel: (0,0) (0,1) (1,1) (1,1) (1,2) (2,2) (2,0)
SEG_TARGET = torch.tensor([[[0, 0, 1, 1], [2, 2, 255, 1]]])
SEG_PRED = torch.tensor([[[0, 1, 1, 1], [2, 0, 0, 2]]])
SEG_CONFUSION = [[1, 1, 0], [0, 2, 1], [1, 0, 1]]  # rows: target, columns: prediction


def test_segmentation_golden_values() -> None:
    metric = SegmentationMetric(3)
    metric.update(SEG_PRED, SEG_TARGET)
    assert metric.confusion.tolist() == SEG_CONFUSION and metric.confusion.dtype == torch.int64
    result = metric.compute()
    # IoU_c = tp / (row + col - tp): 1/(2+2-1), 2/(3+3-2), 1/(2+2-1)
    assert result["per_class_iou"] == pytest.approx([1 / 3, 1 / 2, 1 / 3])
    assert result["miou"] == pytest.approx(7 / 18)
    assert result["pixel_acc"] == pytest.approx(4 / 7)


def test_segmentation_absent_class_is_nan_and_excluded() -> None:
    metric = SegmentationMetric(5)
    metric.update(SEG_PRED, SEG_TARGET)
    result = metric.compute()
    assert math.isnan(result["per_class_iou"][3]) and math.isnan(result["per_class_iou"][4])
    assert result["miou"] == pytest.approx(7 / 18)
    # a class predicted but never present has IoU 0, which does count
    metric.update(torch.tensor([[4]]), torch.tensor([[0]]))
    result = metric.compute()
    assert result["per_class_iou"][4] == 0.0 and result["per_class_iou"][0] == pytest.approx(1 / 4)


def test_segmentation_ignore_index() -> None:
    changed = SEG_PRED.clone()
    changed[0, 1, 2] = 2  # the prediction at the ignored pixel must not matter
    a, b = SegmentationMetric(3), SegmentationMetric(3)
    a.update(SEG_PRED, SEG_TARGET)
    b.update(changed, SEG_TARGET)
    assert a.compute() == b.compute()
    custom = SegmentationMetric(3, ignore_index=1)
    custom.update(SEG_PRED, SEG_TARGET.masked_fill(SEG_TARGET == 255, 0))
    # target-1 pixels dropped; pairs: (0,0) (0,1) (2,2) (2,0) (0,0)
    assert custom.confusion.tolist() == [[2, 1, 0], [0, 0, 0], [1, 0, 1]]
    with pytest.raises(ValueError, match="outside 0..2"):
        SegmentationMetric(3, ignore_index=None).update(SEG_PRED, SEG_TARGET)


def test_segmentation_accumulates_resets_and_syncs_locally() -> None:
    metric = SegmentationMetric(3)
    metric.update(SEG_PRED[:, :1], SEG_TARGET[:, :1])
    metric.update(SEG_PRED[:, 1:], SEG_TARGET[:, 1:])
    assert metric.confusion.tolist() == SEG_CONFUSION
    metric.sync()
    metric.sync()  # idempotent
    assert metric.compute()["miou"] == pytest.approx(7 / 18)
    metric.reset()
    assert metric.confusion.sum() == 0 and math.isnan(metric.compute()["miou"])


# ----------------------------------------------------------------------------- classification
def test_top1_from_logits_and_indices() -> None:
    metric = Top1Accuracy()
    assert math.isnan(metric.compute()["top1"])
    logits = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 0.0, 5.0], [4.0, 0.0, 0.0]])
    metric.update(logits, torch.tensor([0, 1, 1, 2]))
    assert metric.compute() == {"top1": 0.5}
    metric.update(torch.tensor([1, 1]), torch.tensor([1, 1]))
    metric.sync()
    assert metric.compute() == {"top1": pytest.approx(4 / 6)}
    metric.reset()
    metric.update(torch.tensor([0]), torch.tensor([1]))
    assert metric.compute() == {"top1": 0.0}


# ----------------------------------------------------------------------------- detection
CATEGORY_IDS = (2, 5, 9)  # sparse on purpose: the evaluator must map labels 1..3 back


def make_gt(root: Path, seed: int = 0) -> Path:
    """5 images of 300x300, 3 categories, boxes spanning small / medium / large areas; image 5 empty."""
    rng = np.random.default_rng(seed)
    images, anns = [], []
    for image_id in range(1, 6):
        Image.new("RGB", (300, 300)).save(root / f"{image_id}.png")
        images.append({"id": image_id, "file_name": f"{image_id}.png", "width": 300, "height": 300})
        for _ in range(0 if image_id == 5 else int(rng.integers(2, 6))):
            side = float(rng.choice([20, 60, 130])) * rng.uniform(0.8, 1.2)
            w, h = side, side * rng.uniform(0.6, 1.4)
            x, y = rng.uniform(0, 300 - w), rng.uniform(0, 300 - h)
            anns.append(
                {
                    "id": len(anns) + 1,
                    "image_id": image_id,
                    "category_id": int(rng.choice(CATEGORY_IDS)),
                    "bbox": [round(v, 2) for v in (x, y, w, h)],
                    "area": round(w * h, 2),
                    "iscrowd": 0,
                }
            )
    cats = [{"id": c, "name": f"class{c}"} for c in CATEGORY_IDS]
    path = root / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def make_detections(gt: dict, seed: int = 1) -> dict[int, dict[str, torch.Tensor]]:
    """Noisy copies of most GT boxes (some with a wrong class), plus false positives; xyxy, labels 1..3."""
    rng = np.random.default_rng(seed)
    label_of = {c: k + 1 for k, c in enumerate(CATEGORY_IDS)}
    outputs = {}
    for image in gt["images"]:
        boxes, scores, labels = [], [], []
        for ann in (a for a in gt["annotations"] if a["image_id"] == image["id"]):
            if rng.random() < 0.15:
                continue  # missed
            x, y, w, h = ann["bbox"]
            x, y = x + rng.normal(0, 0.08 * w), y + rng.normal(0, 0.08 * h)
            w, h = w * rng.uniform(0.8, 1.2), h * rng.uniform(0.8, 1.2)
            boxes.append([x, y, x + w, y + h])
            scores.append(rng.uniform(0.3, 1.0))
            labels.append(label_of[ann["category_id"]] if rng.random() > 0.1 else int(rng.integers(1, 4)))
        for _ in range(int(rng.integers(0, 3))):
            x, y, s = rng.uniform(0, 200), rng.uniform(0, 200), rng.uniform(10, 100)
            boxes.append([x, y, x + s, y + s])
            scores.append(rng.uniform(0.0, 0.6))
            labels.append(int(rng.integers(1, 4)))
        outputs[image["id"]] = {
            "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "scores": torch.tensor(scores, dtype=torch.float32),
            "labels": torch.tensor(labels, dtype=torch.int64),
        }
    return outputs


def reference_stats(gt_path: Path, outputs: dict[int, dict[str, torch.Tensor]], image_ids: list[int]) -> list[float]:
    """pycocotools on its own: COCO(file), loadRes(list of dicts), COCOeval restricted to ``image_ids``."""
    results = []
    for image_id, out in outputs.items():
        for box, score, label in zip(
            out["boxes"].tolist(), out["scores"].tolist(), out["labels"].tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            results.append(
                {
                    "image_id": image_id,
                    "category_id": CATEGORY_IDS[label - 1],
                    "bbox": [x1, y1, x2 - x1, y2 - y1],
                    "score": score,
                }
            )
    with contextlib.redirect_stdout(io.StringIO()):
        coco_gt = COCO(str(gt_path))
        evaluator = COCOeval(coco_gt, coco_gt.loadRes(results), iouType="bbox")
        evaluator.params.imgIds = image_ids
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    return [float(v) for v in evaluator.stats[:6]]


KEYS = ["map", "map_50", "map_75", "map_small", "map_medium", "map_large"]


@pytest.fixture
def detection_setup(tmp_path: Path) -> tuple[Path, CocoDetection, dict]:
    gt_path = make_gt(tmp_path)
    dataset = CocoDetection(tmp_path, gt_path)
    return gt_path, dataset, make_detections(json.loads(gt_path.read_text()))


def evaluate(dataset: CocoDetection, outputs: dict, image_ids: list[int]) -> dict[str, float]:
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    for image_id in image_ids:
        evaluator.update([image_id], [outputs[image_id]])
    return evaluator.compute()


def test_map_equals_pycocotools(detection_setup, capsys: pytest.CaptureFixture) -> None:
    gt_path, dataset, outputs = detection_setup
    result = evaluate(dataset, outputs, [1, 2, 3, 4, 5])
    assert list(result) == KEYS
    expected = reference_stats(gt_path, outputs, [1, 2, 3, 4, 5])
    assert [result[k] for k in KEYS] == expected
    assert 0.2 < result["map"] < 0.95 and all(v > 0 for v in expected)  # a non-trivial, all-buckets case
    assert capsys.readouterr().out == ""  # COCOeval's prints are silenced


def test_map_only_on_images_seen(detection_setup) -> None:
    gt_path, dataset, outputs = detection_setup
    result = evaluate(dataset, outputs, [2, 4])
    assert [result[k] for k in KEYS] == reference_stats(gt_path, {i: outputs[i] for i in (2, 4)}, [2, 4])
    assert result != evaluate(dataset, outputs, [1, 2, 3, 4, 5])


def test_map_with_zero_detections(detection_setup) -> None:
    gt_path, dataset, outputs = detection_setup
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    empty = {"boxes": torch.zeros(0, 4), "scores": torch.zeros(0), "labels": torch.zeros(0, dtype=torch.int64)}
    evaluator.update([1, 2, 3], [empty, empty, empty])
    result = evaluator.compute()
    assert result["map"] == 0.0 and result["map_50"] == 0.0
    # the same as pycocotools with detections only on an image outside the evaluated set
    assert [result[k] for k in KEYS] == reference_stats(gt_path, {4: outputs[4]}, [1, 2, 3])
    assert all(result[k] in (0.0, -1.0) for k in KEYS)


def test_map_with_no_images_and_bad_labels(detection_setup) -> None:
    _, dataset, outputs = detection_setup
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    assert evaluator.compute() == {k: -1.0 for k in KEYS}
    bad = dict(outputs[1], labels=torch.full_like(outputs[1]["labels"], 7))
    with pytest.raises(ValueError, match="label 7"):
        evaluator.update([1], [bad])
    with pytest.raises(ValueError, match="image id 99"):
        evaluator.update([99], [outputs[1]])


def test_map_counts_a_repeated_image_once(detection_setup) -> None:
    _, dataset, outputs = detection_setup
    evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
    evaluator.update([1, 2], [outputs[1], outputs[2]])
    evaluator.update([1], [outputs[1]])
    assert evaluator.compute() == evaluate(dataset, outputs, [1, 2])
    evaluator.reset()
    assert evaluator.compute()["map"] == -1.0


# ----------------------------------------------------------------------------- torch.distributed
def _distributed_worker(rank: int, world: int, init_file: str, gt_dir: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # first: a forked worker must not use the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        gt_path = Path(gt_dir) / "gt.json"
        dataset = CocoDetection(Path(gt_dir), gt_path)
        outputs = make_detections(json.loads(gt_path.read_text()))
        evaluator = CocoEvaluator(dataset.coco, dataset.label_to_cat_id)
        mine = [1, 3, 5] if rank == 0 else [2, 3]  # image 3 on both ranks, as a padded sampler would do
        evaluator.update(mine, [outputs[i] for i in mine])
        seg = SegmentationMetric(3)
        seg.update(SEG_PRED[:, rank : rank + 1], SEG_TARGET[:, rank : rank + 1])
        seg.sync()
        top1 = Top1Accuracy()
        top1.update(torch.tensor([rank, 1]), torch.tensor([0, 1]))
        top1.sync()
        result = {
            "det": evaluator.compute(),
            "seg": seg.compute(),
            "top1": top1.compute(),
            "local": seg.confusion.tolist(),
        }
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        dist.destroy_process_group()


def test_metrics_gather_across_processes(tmp_path: Path) -> None:
    gt_dir = tmp_path / "gt"
    gt_dir.mkdir()
    gt_path = make_gt(gt_dir)
    outputs = make_detections(json.loads(gt_path.read_text()))
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    # fork: the workers need nothing this process has not imported yet (spawn re-imports it all, ~10 s)
    args = (2, str(tmp_path / "init"), str(gt_dir), str(tmp_path))
    mp.start_processes(_distributed_worker, args=args, nprocs=2, start_method="fork")
    expected_map = reference_stats(gt_path, {i: outputs[i] for i in (1, 2, 3, 5)}, [1, 2, 3, 5])
    for rank in (0, 1):
        result = json.loads((tmp_path / f"rank{rank}.json").read_text())
        assert [result["det"][k] for k in KEYS] == expected_map
        assert result["seg"]["miou"] == pytest.approx(7 / 18)  # both halves reduced = the whole example
        assert result["seg"]["pixel_acc"] == pytest.approx(4 / 7)
        assert result["local"] != SEG_CONFUSION  # the local matrix is kept, sync is idempotent
        assert result["top1"]["top1"] == pytest.approx(3 / 4)
