"""MasKD: distil only where learned receptive masks look (Huang et al., ICLR 2023).

Two forms, one loss name (``maskd``):

- **As published (two stages)**, with ``tokens: FILE``. Stage 1 (``avatarkd maskd-tokens``)
  learns ``ReceptiveTokens`` on the frozen teacher: T tokens give T attention maps
  ``m_j = sigmoid(<token_j, t>)`` over positions, and a small predictor gives per-image token
  weights. Stage 2 (this module) loads them frozen and computes, per image and token, the masked
  squared error between student and teacher normalised by the mask's area, weighted by the
  image's token weights; after ``warmup_steps`` training steps each mask is multiplied by the
  same token's mask computed on the student feature (no gradient through it), so the student
  also decides where to look. This follows the AKD reference code's ``AKD_MasKDLoss``.
- **Simplified** (no tokens file, what avatarkd had before): global tokens learnt together with
  the student, ``sigmoid(<token_j, t> / sqrt(C))``, with global (not per-image) token weights.
  The log says when this form is used.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from ..errors import CheckpointError, ConfigError
from ..loading import load_torch_file
from ..registry import register_loss

log = logging.getLogger(__name__)

TOKENS_FORMAT = "avatarkd-maskd-tokens/1"


def maskd_loss(student: Tensor, teacher: Tensor, masks: Tensor, token_weights: Tensor) -> Tensor:
    """sum_j w_j * mean_n [ sum_{c,hw} m_{njhw} (s - t)^2 / sum_hw m_{njhw} ].

    ``masks`` is (N, T, H, W) and ``token_weights`` (T,), summing to 1.
    """
    sq = (student - teacher).pow(2).sum(1)  # (N, H, W)
    area = masks.flatten(2).sum(-1).clamp_min(1e-6)  # (N, T)
    per_token = (masks * sq.unsqueeze(1)).flatten(2).sum(-1) / area  # (N, T)
    return (per_token.mean(0) * token_weights).sum()


def maskd_published_loss(student: Tensor, teacher: Tensor, masks: Tensor, image_weights: Tensor) -> Tensor:
    """mean_n sum_j w_{nj} * mean_c [ sum_hw (m_{njhw} (s - t))^2 / sum_hw m_{njhw} ] (the reference code's form).

    ``masks`` is (N, T, H, W) and ``image_weights`` (N, T), each row summing to 1. The mask
    multiplies the difference before squaring, as in the reference, and the channel mean keeps
    the scale independent of the channel count.
    """
    diff = (student - teacher).unsqueeze(1) * masks.unsqueeze(2)  # (N, T, C, H, W)
    per_channel = diff.pow(2).flatten(3).sum(-1)  # (N, T, C)
    area = masks.flatten(2).sum(-1).clamp_min(1e-6)  # (N, T)
    per_token = per_channel.mean(-1) / area  # (N, T)
    return (per_token * image_weights).sum(-1).mean()


def dice_coefficient(masks: Tensor) -> Tensor:
    """Mean Dice coefficient between every two different token masks of an image: the diversity penalty.

    ``masks`` is (N, T, H, W); for tokens i != j, ``2 <m_i, m_j> / (|m_i|^2 + |m_j|^2)``, averaged
    over the N * T * (T - 1) ordered pairs. 0 when the masks never overlap, 1 when they are equal:
    adding it to stage 1's loss keeps the T tokens from all looking at the same place.
    """
    n, t = masks.shape[:2]
    if t < 2:
        return masks.new_zeros(())
    flat = masks.flatten(2)  # (N, T, P)
    inner = flat @ flat.transpose(1, 2)  # (N, T, T)
    norms = flat.pow(2).sum(-1) + 1e-12  # (N, T)
    dice = 2 * inner / (norms.unsqueeze(2) + norms.unsqueeze(1))
    off = ~torch.eye(t, dtype=torch.bool, device=masks.device)
    return dice[:, off].sum() / (n * t * (t - 1))


class ReceptiveTokens(nn.Module):
    """MasKD's receptive tokens over ``channels`` channels and their per-image weight predictor.

    ``masks(x)``: (N, T, H, W) attention maps ``sigmoid(<token_j, x_hw>)``. ``weights(x)``: (N, T)
    per-image token weights from a 3x3 conv, global average pooling, a 1x1 conv and a softmax
    over tokens. ``forward(x)``: the feature the teacher's head sees in stage 1,
    ``sum_j w_{nj} m_j * x``, and the masks (for the Dice penalty).
    """

    def __init__(self, channels: int, num_tokens: int = 6) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"MasKD num_tokens must be >= 1, got {num_tokens}")
        self.channels, self.num_tokens = int(channels), int(num_tokens)
        self.tokens = nn.Parameter(torch.randn(num_tokens, channels) * 0.01)
        convs = (nn.Conv2d(channels, channels, 3, padding=1), nn.Conv2d(channels, num_tokens, 1))
        self.predictor = nn.Sequential(convs[0], nn.AdaptiveAvgPool2d(1), convs[1])
        for conv in convs:
            fan_out = conv.kernel_size[0] * conv.kernel_size[1] * conv.out_channels
            nn.init.normal_(conv.weight, 0.0, math.sqrt(2.0 / fan_out))
            if conv.bias is not None:
                nn.init.zeros_(conv.bias)

    def masks(self, x: Tensor) -> Tensor:
        return torch.sigmoid(torch.einsum("tc,nchw->nthw", self.tokens.to(x.dtype), x))

    def weights(self, x: Tensor) -> Tensor:
        return torch.softmax(self.predictor(x).flatten(1), dim=1)

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        masks = self.masks(x)
        mix = (masks * self.weights(x)[:, :, None, None]).sum(1, keepdim=True)  # (N, 1, H, W)
        return x * mix, masks

    def to_file(self) -> dict[str, Any]:
        """Tensors and plain numbers only: what ``torch.load(weights_only=True)`` reads back."""
        return {
            "tokens": self.tokens.detach().cpu().clone(),
            "predictor": {k: v.detach().cpu().clone() for k, v in self.predictor.state_dict().items()},
            "channels": self.channels,
            "num_tokens": self.num_tokens,
        }

    @classmethod
    def from_file(cls, entry: Mapping[str, Any]) -> ReceptiveTokens:
        module = cls(int(entry["channels"]), int(entry["num_tokens"]))
        with torch.no_grad():
            module.tokens.copy_(entry["tokens"])
        module.predictor.load_state_dict(entry["predictor"])
        return module


def read_tokens_file(path: str | Path) -> dict[str, Any]:
    """The tokens file ``avatarkd maskd-tokens`` wrote; anything else is a one-line ConfigError."""
    if not isinstance(path, (str, Path)):
        raise ConfigError(f"maskd tokens: expected the path of a tokens file, got {path!r}")
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"maskd tokens file {str(path)!r} does not exist; train it with `avatarkd maskd-tokens`")
    try:
        data = load_torch_file(path, what="MasKD tokens file")
    except CheckpointError as err:  # the user's input: one line, as a config error
        raise ConfigError(f"maskd tokens: {err}") from None
    if not isinstance(data, dict) or data.get("format") != TOKENS_FORMAT:
        raise ConfigError(f"{str(path)!r} is not a MasKD tokens file (written by `avatarkd maskd-tokens`)")
    return data


_told_simplified = False


@register_loss("maskd", channels=True, label=True)
class MasKD(nn.Module):
    """Learned-mask distillation with ``num_tokens`` mask tokens over ``channels`` channels.

    Args:
        num_tokens: T (simplified form; with ``tokens`` the file's count is used).
        learn_weights: simplified form: learn global token weights instead of uniform ones.
        tokens: a file from ``avatarkd maskd-tokens`` (stage 1): the published two-stage form with
            frozen tokens, per-image token weights and the student-mask warm-up.
        warmup_steps: with ``tokens``: training steps before each mask is multiplied by the
            student's own mask for the same token (7000 in the reference AKD config).
        label: the distillation level (``point[.level]``) whose tokens to read from the file; the
            point builder passes it.
    """

    batch_separable = True
    step: Tensor

    def __init__(
        self,
        channels: int,
        num_tokens: int = 6,
        learn_weights: bool = True,
        tokens: str | None = None,
        warmup_steps: int = 0,
        label: str = "",
    ) -> None:
        super().__init__()
        global _told_simplified
        if isinstance(warmup_steps, bool) or not isinstance(warmup_steps, int) or warmup_steps < 0:
            raise ConfigError(f"maskd warmup_steps must be an integer >= 0, got {warmup_steps!r}")
        self.warmup_steps = warmup_steps
        self.register_buffer("step", torch.zeros((), dtype=torch.long))  # training steps seen (a resume keeps it)
        self.receptive: ReceptiveTokens | None = None
        if tokens is None:
            if num_tokens < 1:
                raise ValueError(f"MasKD num_tokens must be >= 1, got {num_tokens}")
            if not _told_simplified:
                log.info(
                    "maskd without a tokens file: the simplified form (tokens learnt with the student); "
                    "the published two stages: `avatarkd maskd-tokens`, then loss_kwargs: {tokens: FILE}"
                )
                _told_simplified = True
            self.tokens = nn.Parameter(torch.randn(num_tokens, channels) / math.sqrt(channels))
            self.weight_logits = nn.Parameter(torch.zeros(num_tokens), requires_grad=learn_weights)
            return
        data = read_tokens_file(tokens)
        levels = data.get("levels", {})
        if label not in levels:
            raise ConfigError(
                f"maskd tokens file {tokens!r} has no tokens for {label!r} (it has {', '.join(levels) or 'none'}); "
                "train them on this config with `avatarkd maskd-tokens`"
            )
        entry = levels[label]
        if int(entry["channels"]) != channels:
            raise ConfigError(
                f"maskd tokens file {tokens!r}: the tokens of {label!r} are for {int(entry['channels'])} channels, "
                f"but the teacher feature there has {channels}"
            )
        self.receptive = ReceptiveTokens.from_file(entry).requires_grad_(False)  # frozen: stage 1 trained them

    def masks(self, teacher: Tensor) -> Tensor:
        if self.receptive is not None:
            return self.receptive.masks(teacher)
        scale = 1.0 / math.sqrt(teacher.shape[1])
        return torch.sigmoid(torch.einsum("tc,nchw->nthw", self.tokens, teacher) * scale)

    def train(self, mode: bool = True) -> MasKD:
        super().train(mode)
        if self.receptive is not None:
            self.receptive.eval()  # frozen parts never change mode (nothing in them does today, but keep it so)
        return self

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        if self.receptive is None:
            weights = torch.softmax(self.weight_logits, dim=0)
            return maskd_loss(student, teacher, self.masks(teacher), weights)
        with torch.no_grad():
            masks = self.receptive.masks(teacher)
            # after the warm-up the student helps decide where to look (decided on the device: no host sync)
            student_masks = self.receptive.masks(student.detach())
            masks = torch.where(self.step >= self.warmup_steps, masks * student_masks, masks)
            image_weights = self.receptive.weights(teacher)
        if self.training:
            self.step += 1
        return maskd_published_loss(student, teacher, masks, image_weights)
