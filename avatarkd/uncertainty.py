"""The uncertainty-aware factor: how much each channel's Avatars are trusted.

Four modes, one class each (``UncertaintyKind`` subclasses, registered by the names users write):

``"variance"`` (our reading of the paper; see docs): per channel,
    ``sigma_c^2 = mean over avatars, batch and positions of (a_k - t)^2``,
    tracked as a running (EMA) estimate initialised from the first batch. Student and avatars are
    both divided by the same sigma, so channels where Avatars disagree more with the teacher teach
    with less weight, and a common scale of student and teacher cancels.
``"relative"`` (default, adopted from the evidence study in docs/results.md, where it beat
    ``"variance"`` on val): the same per-channel sigma divided by its RMS over channels, so that the
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

import math
from collections.abc import Callable
from typing import Any, ClassVar

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn

from .losses.dropout import BATCHNORM_EPS, DropoutCounts, channel_dot, channel_view
from .registry import UNCERTAINTY_MODES, register_uncertainty


def _reduce_dims(ndim: int, channel_dim: int, first: int) -> tuple[int, ...]:
    return tuple(d for d in range(first, ndim) if d != channel_dim)


def batch_standardise(x: Tensor, channel_dim: int = 1, eps: float = 1e-5) -> Tensor:
    """Training-mode, non-affine batch norm: per channel over every dim from ``channel_dim-1`` on.

    ``(x - mean) / sqrt(var + eps)`` with the biased variance, i.e. ``F.batch_norm`` in training
    mode without affine parameters, which is what runs (one fused kernel forward and backward).
    With ``channel_dim=2`` on a (K, N, C, ...) stack, each avatar gets its own statistics.
    """
    if channel_dim == 2:
        if x.shape[0] == 1:
            return batch_standardise(x[0], 1, eps).unsqueeze(0)
        return torch.stack([batch_standardise(xk, 1, eps) for xk in x.unbind(0)])
    if channel_dim != 1:
        raise ValueError(f"batch_standardise: channel_dim must be 1 or 2, got {channel_dim}")
    if x.shape[0] * math.prod(x.shape[2:]) > 1:
        return F.batch_norm(x, None, None, training=True, eps=eps)
    dims = _reduce_dims(x.dim(), 1, 0)  # one value per channel: F.batch_norm refuses it
    var, mean = torch.var_mean(x, dim=dims, keepdim=True, unbiased=False)
    return (x - mean) * torch.rsqrt(var + eps)


@torch.no_grad()
def standardise_avatar(x: Tensor, eps: float = 1e-5) -> Tensor:
    """``batch_standardise(x)`` for a tensor that needs no gradient (an avatar), in place when it can.

    Two passes (the channel means, then the centred squares), like a textbook two-pass variance, so
    it stays exact to rounding whatever the mean; on CPU several times faster than ``F.batch_norm``'s
    fused kernel, which is what makes per-avatar statistics cheap for K avatars. ``x`` may be
    overwritten: pass a tensor the caller owns.
    """
    if x.dim() < 2:
        raise ValueError(f"standardise_avatar: expected (N, C, ...), got shape {tuple(x.shape)}")
    if x.requires_grad or x.is_inference():
        x = x.detach().clone()
    per_channel = x.numel() // x.shape[1]
    rows = x.unsqueeze(-1) if x.dim() == 2 else x.flatten(2)
    mean = rows.sum(-1).sum(0).div_(per_channel)
    x.sub_(channel_view(mean, x.dim()))
    var = channel_dot(x, x).div_(per_channel)
    return x.mul_(channel_view(var.add_(eps).rsqrt_(), x.dim()))


def _estimate_dtype(x: Tensor) -> torch.dtype:
    """Float32 at least (half-precision features), float64 for float64 features."""
    return torch.promote_types(x.dtype, torch.float32)


@torch.no_grad()
def dropout_batch_var(counts: DropoutCounts) -> Tensor:
    """The batch estimate ``mean over avatars, batch, positions of (a_k - t)^2`` for dropout avatars.

    Computed from the keep counts ``c`` instead of the K avatars: with ``a_k = t m_k / q``,
    ``sum_k (a_k - t)^2 = t^2 (c / q^2 - 2 c / q + K)``, so per channel it is
    ``(<t, t c> (1/q^2 - 2/q) + K <t, t>) / (K M)``, M the elements per channel: the same number as
    ``Uncertainty._batch_var(t, avatars)`` for the same masks.
    """
    t, q, k = counts.teacher, counts.keep, counts.num
    per_channel = t.numel() // t.shape[1]
    var = counts.dot("tk") * (1.0 / q**2 - 2.0 / q) + k * counts.dot("tt")
    return var.to(_estimate_dtype(t)).div_(k * per_channel).clamp_min_(0.0)


class UncertaintyKind:
    """One uncertainty mode: how student and avatars are rescaled, and what that allows.

    Subclass it and register it with ``@register_uncertainty("name")``: the config accepts
    ``uncertainty: name``, ``AvatarLoss(..., uncertainty="name")`` uses it, and ``AvatarLoss`` picks
    its code path by asking the class (``fast_forms``), never by the name. Three shapes of mode:

    - ``keeps_estimate``: one per-channel ``sigma`` (``sigma()`` of the running variance estimate
      of the avatars around the teacher) divides the student and every avatar alike;
    - ``per_avatar``: the student and each avatar are rescaled by their own statistics
      (``student()``, ``avatar()``);
    - neither: no rescaling.
    """

    name: ClassVar[str] = ""
    keeps_estimate: ClassVar[bool] = False
    per_avatar: ClassVar[bool] = False
    # The exact dropout twins of a base loss this mode can use, best first (``AvatarLoss.dropout_form``).
    # A common per-channel factor commutes with keep counts and streamed masks: all three apply.
    fast_forms: ClassVar[tuple[str, ...]] = ("avatar_counts", "avatar_masks", "avatar_stream")

    def sigma(self, var: Tensor, rel_floor: float) -> Tensor:
        """Per-channel sigma (C,) from the running variance estimate (``keeps_estimate`` modes)."""
        raise NotImplementedError(f"uncertainty mode {self.name!r} keeps no estimate")

    def student(self, x: Tensor) -> Tensor:
        """The rescaled student (``per_avatar`` modes), differentiable."""
        raise NotImplementedError(f"uncertainty mode {self.name!r} has no per-avatar rescaling")

    def avatar(self, a: Tensor) -> Tensor:
        """One rescaled avatar (N, C, ...) (``per_avatar`` modes); ``a`` is the caller's to overwrite."""
        raise NotImplementedError(f"uncertainty mode {self.name!r} has no per-avatar rescaling")


@register_uncertainty("variance")
class VarianceMode(UncertaintyKind):
    """Our reading of the paper: sigma^2 per channel = running mean of (a_k - t)^2."""

    keeps_estimate = True

    def sigma(self, var: Tensor, rel_floor: float) -> Tensor:
        mean = var.mean()
        # no perturbation at all (p = 0): nothing to weigh by. Decided on the device: no host sync.
        var = self.normalise(var.clamp_min(rel_floor * mean))
        return torch.where(mean > 0, var.sqrt(), torch.ones_like(var))

    def normalise(self, var: Tensor) -> Tensor:
        return var


@register_uncertainty("relative")
class RelativeMode(VarianceMode):
    """The variance mode's sigma divided by its RMS over channels: reweighting without a change of scale."""

    def normalise(self, var: Tensor) -> Tensor:
        return var / var.mean()


@register_uncertainty("batchnorm")
class BatchNormMode(UncertaintyKind):
    """The reference code: non-affine batch standardisation of the student and of each avatar."""

    per_avatar = True
    # each avatar has its own statistics, so no count form: the masks are streamed, one avatar live
    fast_forms = ("avatar_standardised_masks", "avatar_stream")
    eps: ClassVar[float] = BATCHNORM_EPS  # F.batch_norm's; the standardised-masks twins are given it

    def student(self, x: Tensor) -> Tensor:
        return batch_standardise(x, 1, self.eps)

    def avatar(self, a: Tensor) -> Tensor:
        return standardise_avatar(a, self.eps)


@register_uncertainty("none")
class NoneMode(UncertaintyKind):
    """No rescaling, for ablations."""


class Uncertainty(nn.Module):
    """Rescales student and avatars by the uncertainty factor before the base loss.

    Args:
        mode: a registered mode name: ``"variance"``, ``"relative"``, ``"batchnorm"`` or ``"none"``.
        momentum: EMA weight of the newest batch in ``"variance"`` and ``"relative"`` modes.
        rel_floor: ``sigma^2`` is floored at ``rel_floor * mean_c(sigma^2)`` so that a channel the
            teacher never activates (sigma = 0 under dropout) cannot blow the student up; being
            relative, the floor keeps the mode scale-invariant.
    """

    def __init__(self, mode: str = "relative", momentum: float = 0.1, rel_floor: float = 1e-2) -> None:
        super().__init__()
        if mode not in UNCERTAINTY_MODES:
            raise ValueError(f"unknown uncertainty mode {mode!r}; choose one of {', '.join(UNCERTAINTY_MODES.names())}")
        if not 0.0 < momentum <= 1.0:
            raise ValueError(f"uncertainty momentum must be in (0, 1], got {momentum}")
        self.mode = mode  # the name users write; the behaviour is the kind's
        self.kind: UncertaintyKind = UNCERTAINTY_MODES.get(mode)()
        self.momentum = momentum
        self.rel_floor = rel_floor
        self.running_var: Tensor
        self.num_batches_tracked: Tensor
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

    @staticmethod
    @torch.no_grad()
    def _batch_var(teacher: Tensor, avatars: Tensor) -> Tensor:
        dtype = _estimate_dtype(teacher)
        diff = (avatars.to(dtype) - teacher.to(dtype).unsqueeze(0)).pow_(2)
        return diff.mean(dim=_reduce_dims(diff.dim(), 2, 0))

    @torch.no_grad()
    def update(self, var: Tensor) -> None:
        """One EMA step of the running estimate with a batch estimate ``var`` (C,), averaged over ranks."""
        if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(var)
            var /= dist.get_world_size()
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

    @torch.no_grad()
    def sigma_from(self, batch_var: Callable[[], Tensor]) -> Tensor:
        """Per-channel sigma, shape (C,) (RMS 1 in ``"relative"`` mode).

        In training mode (or before the first batch) the running estimate first takes an EMA
        step with ``batch_var()``; it is only called then.
        """
        if self.training or self.running_var.numel() == 0:
            self.update(batch_var())
        return self.kind.sigma(self.running_var, self.rel_floor)

    def sigma(self, teacher: Tensor, avatars: Tensor) -> Tensor:
        """Per-channel sigma (C,) (RMS 1 in ``"relative"`` mode); updates the running estimate in training mode."""
        return self.sigma_from(lambda: self._batch_var(teacher, avatars))

    def forward(self, student: Tensor, teacher: Tensor, avatars: Tensor) -> tuple[Tensor, Tensor]:
        """Returns ``(student', avatars')`` ready for the base loss."""
        kind = self.kind
        if kind.per_avatar:
            with torch.no_grad():
                rescaled = torch.stack([kind.avatar(a.clone()) for a in avatars.unbind(0)])
            return kind.student(student), rescaled
        if not kind.keeps_estimate:
            return student, avatars
        sigma = self.sigma(teacher, avatars).to(student.dtype)
        view = (1, -1) + (1,) * (student.dim() - 2)
        sigma = sigma.view(view)
        return student / sigma, avatars / sigma.unsqueeze(0)
