"""The uncertainty-aware factor: how much each channel's Avatars are trusted.

Four modes:

``"variance"`` (default, our reading of the paper; see docs): per channel,
    ``sigma_c^2 = mean over avatars, batch and positions of (a_k - t)^2``,
    tracked as a running (EMA) estimate initialised from the first batch. Student and avatars are
    both divided by the same sigma, so channels where Avatars disagree more with the teacher teach
    with less weight, and a common scale of student and teacher cancels.
``"relative"``: the same per-channel sigma divided by its RMS over channels, so that the
    channels are weighed against each other exactly as in ``"variance"`` but the base loss keeps
    its own scale (and, for CWD/KD, its temperature on average). ``"variance"`` divides by an
    absolute sigma, which for dropout is ``sqrt(p/(1-p))`` times the teacher's RMS: that rescales
    MSE by about ``(1-p)/p / E[t^2]`` and sharpens a softmax-based loss, so the same loss weight
    means a different strength; this mode isolates the reweighting from that change of scale.
``"batchnorm"`` (the reference code's behaviour): non-affine batch standardisation of the student
    and of each avatar, each with its own batch statistics.
``"none"``: no rescaling, for ablations.

Under torch.distributed the batch estimate is averaged over ranks before the EMA step, so the
running estimate stays identical on every rank.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .config.distill import UNCERTAINTY_MODES, UncertaintyMode


def _reduce_dims(ndim: int, channel_dim: int, first: int) -> tuple[int, ...]:
    return tuple(d for d in range(first, ndim) if d != channel_dim)


def batch_standardise(x: Tensor, channel_dim: int = 1, eps: float = 1e-5) -> Tensor:
    """Training-mode, non-affine batch norm: per channel over every dim from ``channel_dim-1`` on.

    With ``channel_dim=2`` on a (K, N, C, ...) stack, each avatar gets its own statistics.
    """
    dims = _reduce_dims(x.dim(), channel_dim, channel_dim - 1)
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


class Uncertainty(nn.Module):
    """Rescales student and avatars by the uncertainty factor before the base loss.

    Args:
        mode: ``"variance"``, ``"relative"``, ``"batchnorm"`` or ``"none"``.
        momentum: EMA weight of the newest batch in ``"variance"`` and ``"relative"`` modes.
        rel_floor: ``sigma^2`` is floored at ``rel_floor * mean_c(sigma^2)`` so that a channel the
            teacher never activates (sigma = 0 under dropout) cannot blow the student up; being
            relative, the floor keeps the mode scale-invariant.
    """

    def __init__(
        self, mode: UncertaintyMode = "variance", momentum: float = 0.1, rel_floor: float = 1e-2
    ) -> None:
        super().__init__()
        if mode not in UNCERTAINTY_MODES:
            raise ValueError(f"unknown uncertainty mode {mode!r}; choose one of {UNCERTAINTY_MODES}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"uncertainty momentum must be in (0, 1], got {momentum}")
        self.mode = mode
        self.momentum = momentum
        self.rel_floor = rel_floor
        self.register_buffer("running_var", torch.empty(0))
        self.register_buffer("num_batches_tracked", torch.zeros((), dtype=torch.long))

    def extra_repr(self) -> str:
        return f"mode={self.mode!r}, momentum={self.momentum}"

    def _load_from_state_dict(self, state_dict: dict[str, Any], prefix: str, *args: Any) -> None:
        # running_var is shaped by the first batch; accept the saved shape.
        key = prefix + "running_var"
        if key in state_dict:
            self.running_var = torch.empty_like(state_dict[key], device=self.running_var.device)
        super()._load_from_state_dict(state_dict, prefix, *args)

    @torch.no_grad()
    def _batch_var(self, teacher: Tensor, avatars: Tensor) -> Tensor:
        diff = (avatars.float() - teacher.float().unsqueeze(0)).pow_(2)
        var = diff.mean(dim=_reduce_dims(diff.dim(), 2, 0))
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(var)
            var /= dist.get_world_size()
        return var

    @torch.no_grad()
    def sigma(self, teacher: Tensor, avatars: Tensor) -> Tensor:
        """Per-channel sigma, shape (C,) (RMS 1 in ``"relative"`` mode). Updates the running estimate in training mode."""
        if self.training or self.running_var.numel() == 0:
            var = self._batch_var(teacher, avatars)
            if self.running_var.numel() == 0 or self.running_var.shape != var.shape:
                if self.running_var.numel() not in (0, var.numel()):
                    raise ValueError(
                        f"uncertainty: feature has {var.numel()} channels but the running "
                        f"estimate has {self.running_var.numel()}"
                    )
                self.running_var = var.clone()
            else:
                self.running_var.lerp_(var, self.momentum)
            self.num_batches_tracked += 1
        var = self.running_var
        mean = var.mean()
        if mean <= 0:  # no perturbation at all (p = 0): nothing to weigh by
            return torch.ones_like(var)
        var = var.clamp_min(self.rel_floor * mean)
        if self.mode == "relative":
            var = var / var.mean()
        return var.sqrt()

    def forward(self, student: Tensor, teacher: Tensor, avatars: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(student', avatars')`` ready for the base loss."""
        if self.mode == "none":
            return student, avatars
        if self.mode == "batchnorm":
            return batch_standardise(student, 1), batch_standardise(avatars, 2)
        sigma = self.sigma(teacher, avatars).to(student.dtype)
        view = (1, -1) + (1,) * (student.dim() - 2)
        sigma = sigma.view(view)
        return student / sigma, avatars / sigma.unsqueeze(0)
