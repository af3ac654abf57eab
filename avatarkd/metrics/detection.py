"""COCO box mAP computed by pycocotools itself, so numbers are comparable with published results.

Detections are kept per image id: the same image evaluated twice (e.g. on two ranks) counts
once, and only images actually seen are evaluated, so a partial validation pass (``limit_val``)
is not punished for the images it skipped.
"""

from __future__ import annotations

import contextlib
import copy
import io
import logging
from collections.abc import Mapping, Sequence

import numpy as np
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval
from torch import Tensor

from ._dist import all_gather_objects

log = logging.getLogger(__name__)

STAT_KEYS = ("map", "map_50", "map_75", "map_small", "map_medium", "map_large")


def _results_coco(coco_gt: COCO, detections: np.ndarray) -> COCO:
    """The detections as a COCO object; built by hand when empty because ``loadRes([])`` raises IndexError."""
    with contextlib.redirect_stdout(io.StringIO()):
        if len(detections):
            return coco_gt.loadRes(
                [
                    {
                        "image_id": int(d[0]),
                        "bbox": [float(v) for v in d[1:5]],
                        "score": float(d[5]),
                        "category_id": int(d[6]),
                    }
                    for d in detections
                ]
            )
        res = COCO()
        res.dataset = {
            "images": list(coco_gt.dataset["images"]),
            "categories": copy.deepcopy(coco_gt.dataset.get("categories", [])),
            "annotations": [],
        }
        res.createIndex()
        return res


class CocoEvaluator:
    """Collects torchvision detection outputs and reports COCOeval's six AP numbers.

    ``label_to_cat_id`` undoes the dataset's contiguous-label mapping so results refer to the
    JSON's own category ids.
    """

    def __init__(self, coco_gt: COCO, label_to_cat_id: Mapping[int, int]) -> None:
        self.coco_gt = coco_gt
        self.label_to_cat_id = {int(k): int(v) for k, v in label_to_cat_id.items()}
        self.reset()

    def reset(self) -> None:
        self._dets: dict[int, np.ndarray] = {}
        self._synced = False

    def update(self, image_ids: Sequence[int], outputs: Sequence[Mapping[str, Tensor]]) -> None:
        """Record ``outputs[i]`` (``boxes`` xyxy, ``scores``, ``labels``) as the detections of ``image_ids[i]``."""
        if len(image_ids) != len(outputs):
            raise ValueError(f"{len(image_ids)} image ids but {len(outputs)} outputs")
        for image_id, out in zip(image_ids, outputs, strict=True):
            image_id = int(image_id)
            if image_id not in self.coco_gt.imgs:
                raise ValueError(f"image id {image_id} is not in the ground-truth annotations")
            self._dets[image_id] = self._to_rows(image_id, out)
        self._synced = False

    def _to_rows(self, image_id: int, out: Mapping[str, Tensor]) -> np.ndarray:
        """Rows ``[image_id, x, y, w, h, score, category_id]`` (float64, COCO's xywh boxes)."""
        boxes = out["boxes"].detach().cpu().double().numpy().reshape(-1, 4)
        scores = out["scores"].detach().cpu().double().numpy().reshape(-1)
        labels = out["labels"].detach().cpu().numpy().reshape(-1)
        try:
            cats = np.asarray([self.label_to_cat_id[int(lab)] for lab in labels], np.float64)
        except KeyError as exc:
            raise ValueError(
                f"model predicted label {exc.args[0]}, which maps to no category "
                f"(known labels {sorted(self.label_to_cat_id)})"
            ) from None
        xywh = np.concatenate([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]], axis=1)
        ids = np.full((len(boxes), 1), image_id, np.float64)
        return np.concatenate([ids, xywh, scores[:, None], cats[:, None]], axis=1)

    def sync(self) -> None:
        """Merge all ranks' detections (collective); an image seen by several ranks keeps the lowest rank's copy."""
        merged: dict[int, np.ndarray] = {}
        for part in all_gather_objects(self._dets):
            for image_id, rows in part.items():
                merged.setdefault(image_id, rows)
        self._dets, self._synced = merged, True

    def compute(self) -> dict[str, float]:
        """``map, map_50, map_75, map_small, map_medium, map_large`` = COCOeval ``stats[0:6]``.

        -1 means "no ground truth in that bucket" (pycocotools' convention) and is passed on as is.
        Gathers from all ranks first unless ``sync`` was called, so under torch.distributed every
        rank must call it.
        """
        if not self._synced:
            self.sync()
        dets = self._dets
        if not dets:
            log.warning("CocoEvaluator: no images were evaluated; reporting -1 for every AP")
            return {k: -1.0 for k in STAT_KEYS}
        rows = np.concatenate(list(dets.values()), axis=0)
        evaluator = COCOeval(self.coco_gt, _results_coco(self.coco_gt, rows), iouType="bbox")
        evaluator.params.imgIds = sorted(dets)
        with contextlib.redirect_stdout(io.StringIO()):
            evaluator.evaluate()
            evaluator.accumulate()
        summary = io.StringIO()
        with contextlib.redirect_stdout(summary):
            evaluator.summarize()
        log.info(
            "COCO bbox evaluation on %d images, %d detections:\n%s", len(dets), len(rows), summary.getvalue().rstrip()
        )
        return {k: float(v) for k, v in zip(STAT_KEYS, evaluator.stats[:6], strict=True)}
