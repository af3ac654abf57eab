"""The install must give a torchvision whose compiled ops load (the local CPU torch wheel breaks them)."""

import torch
from torchvision.ops import box_iou, nms


def test_torchvision_compiled_ops_load():
    boxes = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 10.0, 10.0], [20.0, 20.0, 30.0, 30.0]])
    keep = nms(boxes, torch.tensor([0.9, 0.8, 0.7]), iou_threshold=0.5)
    assert keep.tolist() == [0, 2]
    assert abs(box_iou(boxes[:1], boxes[1:2]).item() - 0.81) < 1e-6
