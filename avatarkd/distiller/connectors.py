"""Connectors: learnable maps from a student feature to the teacher feature's shape.

They are built from the recorded shapes (never from hard-coded channel counts) and train with the
student; deployment drops them together with the teacher.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from ..errors import DistillationError


class Connector(nn.Module):
    """Channel map (1x1 conv for (N,C,H,W), linear for (N,C)) then bilinear resize if needed."""

    def __init__(
        self, student_shape: tuple[int, ...], teacher_shape: tuple[int, ...], point: str, bn: bool = False
    ) -> None:
        super().__init__()
        if len(student_shape) != len(teacher_shape) or len(student_shape) not in (2, 3, 4):
            raise DistillationError(
                f"point {point!r}: cannot align student feature {student_shape} to teacher "
                f"feature {teacher_shape} (need both (N, C) or both (N, C, H, W))"
            )
        cs, ct = student_shape[1], teacher_shape[1]
        self.resize_to = tuple(teacher_shape[2:]) if student_shape[2:] != teacher_shape[2:] else None
        self.proj: nn.Module
        if cs == ct:
            self.proj = nn.Identity()
        elif len(student_shape) == 2:
            self.proj = nn.Linear(cs, ct)
        else:
            conv = nn.Conv2d if len(student_shape) == 4 else nn.Conv1d
            norm = nn.BatchNorm2d if len(student_shape) == 4 else nn.BatchNorm1d
            layers: list[nn.Module] = [conv(cs, ct, 1, bias=not bn)]
            if bn:
                layers.append(norm(ct))
            self.proj = nn.Sequential(*layers)

    @property
    def is_identity(self) -> bool:
        return isinstance(self.proj, nn.Identity) and self.resize_to is None

    def forward(self, x: Tensor) -> Tensor:
        x = self.proj(x)
        if self.resize_to is not None and x.shape[2:] != self.resize_to:
            mode = "bilinear" if x.dim() == 4 else "linear"
            x = F.interpolate(x, size=self.resize_to, mode=mode, align_corners=False)
        return x
