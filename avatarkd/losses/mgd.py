"""Masked Generative Distillation (MGD): the student must *generate* the teacher feature.

The generator is learnable and trains with the student, so MGD is a module; the arithmetic
after generation is the plain ``mse`` formula scaled by ``alpha``.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

from ..registry import register_loss
from .dropout import DropoutCounts, channel_view, squared_error_counts
from .functional import mse


@register_loss("mgd", channels=True, generator=True)
class MGD(nn.Module):
    """Random spatial mask on the student feature, 3x3-ReLU-3x3 generator, ``alpha * mse``.

    Args:
        channels: channels of the (connector-aligned) student feature and of the teacher feature.
        alpha: loss scale (2e-5 in the reference AKD configs).
        lambda_mgd: probability that a spatial position is masked out (0.65 reference default).
        generator: optional ``torch.Generator`` for reproducible masks.
    """

    def __init__(
        self,
        channels: int,
        alpha: float = 2e-5,
        lambda_mgd: float = 0.65,
        generator: torch.Generator | None = None,
    ) -> None:
        super().__init__()
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
            raise TypeError(f"MGD alpha must be a number, got {alpha!r} ({type(alpha).__name__})")
        if not 0.0 <= lambda_mgd < 1.0:
            raise ValueError(f"MGD lambda_mgd must be in [0, 1), got {lambda_mgd}")
        self.alpha = alpha
        self.lambda_mgd = lambda_mgd
        self.rng = generator
        self.generation = nn.Sequential(
            nn.Conv2d(channels, channels, 3, padding=1),
            nn.ReLU(inplace=True),
            nn.Conv2d(channels, channels, 3, padding=1),
        )

    def generate(self, student: Tensor) -> Tensor:
        """Mask whole spatial positions (all channels at once), then regenerate the feature."""
        n, _, h, w = student.shape
        gen_device = self.rng.device if self.rng is not None else student.device
        keep = torch.rand((n, 1, h, w), generator=self.rng, device=gen_device) >= self.lambda_mgd
        return self.generation(student * keep.to(student.device, student.dtype))

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        return self.alpha * mse(self.generate(student), teacher)

    def avatar_mean(self, student: Tensor, avatars: Tensor) -> Tensor:
        """Mean over avatars with one mask and one generator pass (see ``functional``)."""
        return self.alpha * mse.avatar_mean(self.generate(student), avatars)

    def avatar_counts(self, student: Tensor, counts: DropoutCounts, scale: Tensor | None = None) -> Tensor:
        """Mean over K dropout avatars from their keep counts (see ``dropout.py``), one generator pass."""
        if scale is not None:
            student = student * channel_view(scale, student.dim())
        generated = self.generate(student)
        return self.alpha * squared_error_counts(generated, counts, None, scale) / generated.shape[0]

    def avatar_standardised_masks(
        self, student: Tensor, teacher: Tensor, masks: Iterable[Tensor], num: int, keep: float, eps: float
    ) -> Tensor:
        """Mean over K batch-standardised dropout avatars (``batchnorm`` mode), one generator pass."""
        generated = self.generate(student)
        return self.alpha * mse.avatar_standardised_masks(generated, teacher, masks, num, keep, eps)

    def avatar_stream(self, student: Tensor, avatars: Iterable[Tensor], num: int) -> Tensor:
        """Mean over K avatars consumed one at a time, one generator pass."""
        return self.alpha * mse.avatar_stream(self.generate(student), avatars, num)
