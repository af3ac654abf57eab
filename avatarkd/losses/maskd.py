"""MasKD: distil only where learned receptive masks look.

Mask tokens are learnable and train with the student, so MasKD is a module. Each token ``j`` gives
a spatial attention map ``m_j = sigmoid(<token_j, t> / sqrt(C))`` computed on the teacher (or
Avatar) feature; the loss is the masked squared error normalised by the mask area, averaged over
the batch and weighted over tokens.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from ..registry import register_loss


def maskd_loss(student: Tensor, teacher: Tensor, masks: Tensor, token_weights: Tensor) -> Tensor:
    """sum_j w_j * mean_n [ sum_{c,hw} m_{njhw} (s - t)^2 / sum_hw m_{njhw} ].

    ``masks`` is (N, T, H, W) and ``token_weights`` (T,), summing to 1.
    """
    sq = (student - teacher).pow(2).sum(1)  # (N, H, W)
    area = masks.flatten(2).sum(-1).clamp_min(1e-6)  # (N, T)
    per_token = (masks * sq.unsqueeze(1)).flatten(2).sum(-1) / area  # (N, T)
    return (per_token.mean(0) * token_weights).sum()


@register_loss("maskd", channels=True)
class MasKD(nn.Module):
    """Learned-mask distillation with ``num_tokens`` mask tokens over ``channels`` channels.

    Args:
        learn_weights: learn per-token weights (softmax of logits) instead of uniform ones.
    """

    batch_separable = True

    def __init__(self, channels: int, num_tokens: int = 6, learn_weights: bool = True) -> None:
        super().__init__()
        if num_tokens < 1:
            raise ValueError(f"MasKD num_tokens must be >= 1, got {num_tokens}")
        self.tokens = nn.Parameter(torch.randn(num_tokens, channels) / math.sqrt(channels))
        self.weight_logits = nn.Parameter(torch.zeros(num_tokens), requires_grad=learn_weights)

    def masks(self, teacher: Tensor) -> Tensor:
        scale = 1.0 / math.sqrt(teacher.shape[1])
        return torch.sigmoid(torch.einsum("tc,nchw->nthw", self.tokens, teacher) * scale)

    def forward(self, student: Tensor, teacher: Tensor) -> Tensor:
        weights = torch.softmax(self.weight_logits, dim=0)
        return maskd_loss(student, teacher, self.masks(teacher), weights)
