"""Base distillation losses as plain functions of ``(student, teacher, **hyperparams)``.

Each function is the readable formula; nothing here holds state or parameters. Losses whose
dependence on the teacher is through a mean-able quantity (features for squared errors,
probabilities for KL divergences) also get an ``avatar_mean`` twin, attached as a function
attribute, that returns ``mean_k L(s, a_k)`` for K avatars with ONE student-side evaluation:

    mean_k D(a_k, s) = D(abar, s) + mean_k D(a_k, abar)

holds exactly for squared error (abar = mean feature) and for KL divergence (abar = mean
probability). The second term does not depend on the student, so it is computed without autograd;
the student-side cost of AKD then does not grow with K. Losses without such a form (L1,
smooth L1) are marked ``batch_separable`` instead: their value on a batch of K*N samples is the
mean of their K per-avatar values, so all avatars go through one call.

For drawn dropout avatars, ``mse``, ``l1`` and ``smooth_l1`` also have an ``avatar_counts`` twin (the
mean over K avatars from the per-element keep counts) and ``cwd``/``kd`` an ``avatar_masks`` twin (the K avatars streamed one
mask at a time); both are exact, see ``dropout.py``.

Reductions (stated because papers differ):
- ``mse``: sum of squared differences over all non-batch dims, divided by N (FitNet/MGD style).
- ``cwd``: per (sample, channel) KL over spatial positions, times tau^2, divided by N*C.
- ``kd``: KL over dim 1, summed over classes, mean over batch (and positions for dense logits),
  times tau^2.
- ``dkd``: alpha * TCKD + beta * NCKD, each summed over classes, mean over the labelled samples
  (and pixels, for dense logits), times tau^2.
- ``pkd``: per-channel standardisation over (batch, positions) with the unbiased std plus eps, as
  published; element-wise mean squared error / 2.

Every loss is declared to the loss registry with ``@register_loss`` right above its formula; the
temperature is ``tau`` in every loss (``T`` is still accepted by ``kd``/``dkd``, with a warning).
- ``l1`` / ``smooth_l1``: element-wise mean.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from ..registry import register_loss
from .dropout import (
    L1,
    DropoutCounts,
    channel_view,
    elementwise_counts,
    kl_dropout_mean,
    smooth_l1_elementwise,
    squared_error_counts,
)

__all__ = ["mse", "cwd", "kd", "dkd", "pkd", "l1", "smooth_l1", "kl_div_probs"]


def _check_same_shape(name: str, student: Tensor, teacher: Tensor) -> None:
    if student.shape != teacher.shape:
        raise ValueError(f"{name}: student shape {tuple(student.shape)} != teacher shape {tuple(teacher.shape)}")


def kl_div_probs(p: Tensor, log_q: Tensor, dim: int | tuple[int, ...], log_p: Tensor | None = None) -> Tensor:
    """KL(p || q) summed over ``dim``, with 0 * log 0 = 0.

    ``log_q`` must be finite (it comes from a log-softmax). Pass ``log_p`` when ``p`` is a softmax:
    on CPU a log-softmax of the logits costs far less than ``log`` of the probabilities, and AKD
    evaluates it for K avatars. Without it, clamping ``p`` inside the log makes a zero probability
    contribute exactly 0 without the cost of xlogy/where. ``log_p`` only enters the value: the
    gradient with respect to ``log_q`` is ``-p`` either way.
    """
    if log_p is None:
        log_p = p.clamp_min(torch.finfo(p.dtype).tiny).log()
    return (p * (log_p - log_q)).sum(dim=dim)


def _log_mean_probs(p_k: Tensor, log_p_k: Tensor) -> tuple[Tensor, Tensor]:
    """Mean over avatars (dim 0) of probabilities, and its log (one log of a K-times smaller tensor).

    With one avatar it is that avatar's own log-softmax, so that K=1 reproduces the base loss exactly.
    """
    if p_k.shape[0] == 1:
        return p_k[0], log_p_k[0]
    p_bar = p_k.mean(0)
    return p_bar, p_bar.clamp_min(torch.finfo(p_bar.dtype).tiny).log()


def _mean_gap(per_avatar: Callable[[Tensor], Tensor], avatars: Tensor) -> Tensor:
    """mean_k of a student-independent term, evaluated without autograd."""
    with torch.no_grad():
        return per_avatar(avatars).mean()


# --------------------------------------------------------------------------- MSE / FitNet
@register_loss("mse")
def mse(student: Tensor, teacher: Tensor) -> Tensor:
    """FitNet: sum of squared differences over C,H,W divided by the batch size N."""
    _check_same_shape("mse", student, teacher)
    return (student - teacher).pow(2).sum() / student.shape[0]


def _mse_avatar_mean(student: Tensor, avatars: Tensor) -> Tensor:
    abar = avatars.mean(0)
    n = student.shape[0]
    gap = _mean_gap(lambda a: (a - abar).pow(2).flatten(1).sum(1) / n, avatars)
    return mse(student, abar) + gap


def _mse_avatar_counts(student: Tensor, counts: DropoutCounts, scale: Tensor | None = None) -> Tensor:
    """mean_k mse(scale * student, scale * a_k) over K dropout avatars given by their keep counts (``dropout.py``)."""
    _check_same_shape("mse", student, counts.teacher)
    return squared_error_counts(student, counts, scale, scale) / student.shape[0]


def _avatar_logits(teacher: Tensor, keep: float, scale: Tensor | None, tau: float) -> Tensor:
    """Teacher logits of a kept element of a dropout avatar: ``t * scale / (keep * tau)``."""
    mult = 1.0 / (keep * tau)
    if scale is None:
        return teacher * mult
    return teacher * channel_view(scale * mult, teacher.dim())


def _student_mult(student: Tensor, scale: Tensor | None, tau: float) -> Tensor | float:
    return 1.0 / tau if scale is None else channel_view(scale / tau, student.dim())


# --------------------------------------------------------------------------- CWD
def _cwd_flat(x: Tensor) -> Tensor:
    if x.dim() < 3:
        raise ValueError(f"cwd needs (N, C, spatial...) features, got shape {tuple(x.shape)}")
    return x.flatten(2)


@register_loss("cwd")
def cwd(student: Tensor, teacher: Tensor, tau: float = 1.0) -> Tensor:
    """Channel-wise distillation: spatial softmax per channel, KL(teacher || student) * tau^2 / (N*C)."""
    _check_same_shape("cwd", student, teacher)
    s, t = _cwd_flat(student), _cwd_flat(teacher)
    z_t = t / tau
    p_t = F.softmax(z_t, dim=-1)
    log_p_s = F.log_softmax(s / tau, dim=-1)
    n, c = s.shape[:2]
    return kl_div_probs(p_t, log_p_s, dim=-1, log_p=F.log_softmax(z_t, dim=-1)).sum() * tau**2 / (n * c)


def _cwd_avatar_mean(student: Tensor, avatars: Tensor, tau: float = 1.0) -> Tensor:
    s = _cwd_flat(student)
    n, c = s.shape[:2]
    with torch.no_grad():
        z_k = avatars.flatten(3) / tau
        p_k, log_p_k = F.softmax(z_k, dim=-1), F.log_softmax(z_k, dim=-1)
        p_bar, log_bar = _log_mean_probs(p_k, log_p_k)
        gap = kl_div_probs(p_k, log_bar, dim=-1, log_p=log_p_k)
        gap = gap.sum((1, 2)).mean() * tau**2 / (n * c)
    main = kl_div_probs(p_bar, F.log_softmax(s / tau, dim=-1), dim=-1, log_p=log_bar).sum() * tau**2 / (n * c)
    return main + gap


def _cwd_avatar_masks(
    student: Tensor,
    teacher: Tensor,
    masks: Iterable[Tensor],
    num: int,
    keep: float,
    scale: Tensor | None = None,
    tau: float = 1.0,
) -> Tensor:
    """mean_k cwd(scale * student, scale * t * m_k / keep), the K masks streamed (see ``dropout.py``)."""
    _check_same_shape("cwd", student, teacher)
    s = _cwd_flat(student)
    n, c = s.shape[:2]
    mult = 1.0 / tau if scale is None else (scale / tau).view(1, -1, 1)
    rows = kl_dropout_mean(
        s,
        mult,
        _cwd_flat(_avatar_logits(teacher.detach(), keep, scale, tau)),
        (m.flatten(2) for m in masks),
        num,
        dim=-1,
    )
    return rows.sum() * tau**2 / (n * c)


# --------------------------------------------------------------------------- KD
def _kd_reduce(kl: Tensor) -> Tensor:
    # kl has the class dim summed away: (N, *positions); batch (and position) mean.
    return kl.mean()


@register_loss("kd")
def kd(student: Tensor, teacher: Tensor, tau: float = 4.0) -> Tensor:
    """Hinton KD: KL(softmax(t/tau) || softmax(s/tau)) over dim 1, batch mean, times tau^2."""
    _check_same_shape("kd", student, teacher)
    z_t = teacher / tau
    p_t, log_p_t = F.softmax(z_t, dim=1), F.log_softmax(z_t, dim=1)
    return _kd_reduce(kl_div_probs(p_t, F.log_softmax(student / tau, dim=1), dim=1, log_p=log_p_t)) * tau**2


def _kd_avatar_mean(student: Tensor, avatars: Tensor, tau: float = 4.0) -> Tensor:
    with torch.no_grad():
        z_k = avatars / tau
        p_k, log_p_k = F.softmax(z_k, dim=2), F.log_softmax(z_k, dim=2)
        p_bar, log_bar = _log_mean_probs(p_k, log_p_k)
        gap = kl_div_probs(p_k, log_bar, dim=2, log_p=log_p_k).flatten(1).mean(1).mean() * tau**2
    main = _kd_reduce(kl_div_probs(p_bar, F.log_softmax(student / tau, dim=1), dim=1, log_p=log_bar)) * tau**2
    return main + gap


def _kd_avatar_masks(
    student: Tensor,
    teacher: Tensor,
    masks: Iterable[Tensor],
    num: int,
    keep: float,
    scale: Tensor | None = None,
    tau: float = 4.0,
) -> Tensor:
    """mean_k kd(scale * student, scale * t * m_k / keep), the K masks streamed (see ``dropout.py``)."""
    _check_same_shape("kd", student, teacher)
    rows = kl_dropout_mean(
        student,
        _student_mult(student, scale, tau),
        _avatar_logits(teacher.detach(), keep, scale, tau),
        masks,
        num,
        dim=1,
    )
    return _kd_reduce(rows) * tau**2


# --------------------------------------------------------------------------- DKD
def _dkd_parts(logits: Tensor, target: Tensor, tau: float) -> tuple[Tensor, Tensor]:
    """Binary (target, non-target) probabilities and the log-softmax over non-target classes.

    ``logits`` is (..., M, C) with classes last; ``target`` is (M,).
    """
    c = logits.shape[-1]
    gt = F.one_hot(target, c).to(torch.bool).expand_as(logits)
    p = F.softmax(logits / tau, dim=-1)
    p_gt = p.masked_select(gt).view(*logits.shape[:-1], 1)
    binary = torch.cat([p_gt, 1 - p_gt], dim=-1)
    others = logits.masked_select(~gt).view(*logits.shape[:-1], c - 1)
    return binary, F.log_softmax(others / tau, dim=-1)


def _dkd_rows(
    student: Tensor, target: Tensor | None, avatars: Tensor | None = None
) -> tuple[Tensor, Tensor | None, Tensor]:
    """Classes-last rows of the labelled samples (or pixels): (M, C) student, (K, M, C) avatars, (M,) target.

    Dense logits (N, C, H, W) are distilled per pixel: the label mask is resized (nearest) to the
    logits' size when they differ, and entries labelled < 0 (ignored) are left out.
    """
    if target is None:
        raise ValueError(
            "dkd needs the ground-truth labels: pass target=<(N,) or (N, H, W) int64 tensor> "
            "(the Distiller hands them over from the task as loss_context['target'])"
        )
    if student.dim() < 2 or target.dim() != student.dim() - 1 or target.shape[0] != student.shape[0]:
        raise ValueError(
            f"dkd expects (N, C[, H, W]) logits and (N[, H, W]) targets, got {tuple(student.shape)} "
            f"and {tuple(target.shape)}"
        )
    target = target.long()
    if target.shape[1:] != student.shape[2:]:
        target = F.interpolate(target[:, None].float(), size=tuple(student.shape[2:]), mode="nearest")[:, 0].long()
    c = student.shape[1]
    rows = target.reshape(-1)
    if bool((rows >= c).any()):
        raise ValueError(
            f"dkd: label {int(rows.max())} is not a class of the {c}-channel logits (is the point on the logits?)"
        )
    keep = rows >= 0
    s = student.movedim(1, -1).reshape(-1, c)[keep]
    a = avatars.movedim(2, -1).reshape(avatars.shape[0], -1, c)[:, keep] if avatars is not None else None
    return s, a, rows[keep]


@register_loss("dkd", context=("target",))
def dkd(
    student: Tensor,
    teacher: Tensor,
    target: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 8.0,
    tau: float = 4.0,
) -> Tensor:
    """Decoupled KD: alpha * KL of (target, non-target) mass + beta * KL among non-target classes.

    Needs the labels (``target``); dense logits are distilled per labelled pixel.
    """
    _check_same_shape("dkd", student, teacher)
    s, t, target = _dkd_rows(student, target, teacher.unsqueeze(0))
    n = max(len(target), 1)
    b_s, log_o_s = _dkd_parts(s, target, tau)
    b_t, log_o_t = _dkd_parts(t[0], target, tau)
    tckd = kl_div_probs(b_t, b_s.clamp_min(torch.finfo(b_s.dtype).tiny).log(), dim=-1).sum() / n
    nckd = kl_div_probs(log_o_t.exp(), log_o_s, dim=-1).sum() / n
    return (alpha * tckd + beta * nckd) * tau**2


def _dkd_avatar_mean(
    student: Tensor,
    avatars: Tensor,
    target: Tensor | None = None,
    alpha: float = 1.0,
    beta: float = 8.0,
    tau: float = 4.0,
) -> Tensor:
    s, a, target = _dkd_rows(student, target, avatars)
    n = max(len(target), 1)
    tiny = torch.finfo(student.dtype).tiny
    with torch.no_grad():
        b_k, log_o_k = _dkd_parts(a, target, tau)
        o_k = log_o_k.exp()
        b_bar, o_bar = b_k.mean(0), o_k.mean(0)
        gap_b = kl_div_probs(b_k, b_bar.clamp_min(tiny).log(), dim=-1).sum() / (n * len(a))
        gap_o = kl_div_probs(o_k, o_bar.clamp_min(tiny).log(), dim=-1).sum() / (n * len(a))
    b_s, log_o_s = _dkd_parts(s, target, tau)
    tckd = kl_div_probs(b_bar, b_s.clamp_min(tiny).log(), dim=-1).sum() / n + gap_b
    nckd = kl_div_probs(o_bar, log_o_s, dim=-1).sum() / n + gap_o
    return (alpha * tckd + beta * nckd) * tau**2


# --------------------------------------------------------------------------- PKD
def _standardise(x: Tensor, channel_dim: int, eps: float) -> Tensor:
    """``(x - mean) / (std + eps)`` per channel over every other dim after ``channel_dim - 1``.

    The std is the unbiased one (``torch.std``'s default), as in the published PKD.
    """
    dims = tuple(d for d in range(channel_dim - 1, x.dim()) if d != channel_dim)
    std, mean = torch.std_mean(x, dim=dims, keepdim=True, correction=1)
    return (x - mean) / (std + eps)


def _resize_like(student: Tensor, size: torch.Size) -> Tensor:
    if student.shape[2:] == size:
        return student
    return F.interpolate(student, size=tuple(size), mode="bilinear", align_corners=False)


@register_loss("pkd")
def pkd(student: Tensor, teacher: Tensor, eps: float = 1e-6) -> Tensor:
    """Pearson-correlation KD: per-channel standardised features, mean squared error / 2.

    The student is bilinearly resized to the teacher's spatial size when they differ.
    """
    if student.dim() == 4:
        student = _resize_like(student, teacher.shape[2:])
    _check_same_shape("pkd", student, teacher)
    s = _standardise(student, 1, eps)
    t = _standardise(teacher, 1, eps)
    return (s - t).pow(2).mean() / 2


def _pkd_avatar_mean(student: Tensor, avatars: Tensor, eps: float = 1e-6) -> Tensor:
    if student.dim() == 4:
        student = _resize_like(student, avatars.shape[3:])
    with torch.no_grad():
        n_k = _standardise(avatars, 2, eps)
        n_bar = n_k.mean(0)
        gap = (n_k - n_bar).pow(2).mean() / 2
    s = _standardise(student, 1, eps)
    return (s - n_bar).pow(2).mean() / 2 + gap


# --------------------------------------------------------------------------- head losses
@register_loss("l1")
def l1(student: Tensor, teacher: Tensor) -> Tensor:
    """Element-wise mean absolute error (box-regression heads)."""
    _check_same_shape("l1", student, teacher)
    return (student - teacher).abs().mean()


@register_loss("smooth_l1")
def smooth_l1(student: Tensor, teacher: Tensor, beta: float = 1.0) -> Tensor:
    """Element-wise mean Huber loss with transition point ``beta``."""
    _check_same_shape("smooth_l1", student, teacher)
    return F.smooth_l1_loss(student, teacher, beta=beta)


def _l1_avatar_counts(student: Tensor, counts: DropoutCounts, scale: Tensor | None = None) -> Tensor:
    """mean_k l1(scale * student, scale * a_k) over K dropout avatars given by their keep counts (``dropout.py``)."""
    _check_same_shape("l1", student, counts.teacher)
    return elementwise_counts(L1, student, counts, scale) / student.numel()


def _smooth_l1_avatar_counts(
    student: Tensor, counts: DropoutCounts, scale: Tensor | None = None, beta: float = 1.0
) -> Tensor:
    """mean_k smooth_l1(scale * student, scale * a_k) from the keep counts (``dropout.py``)."""
    _check_same_shape("smooth_l1", student, counts.teacher)
    return elementwise_counts(smooth_l1_elementwise(beta), student, counts, scale) / student.numel()


mse.avatar_mean = _mse_avatar_mean  # type: ignore[attr-defined]
cwd.avatar_mean = _cwd_avatar_mean  # type: ignore[attr-defined]
kd.avatar_mean = _kd_avatar_mean  # type: ignore[attr-defined]
dkd.avatar_mean = _dkd_avatar_mean  # type: ignore[attr-defined]
pkd.avatar_mean = _pkd_avatar_mean  # type: ignore[attr-defined]
mse.avatar_counts = _mse_avatar_counts  # type: ignore[attr-defined]
cwd.avatar_masks = _cwd_avatar_masks  # type: ignore[attr-defined]
kd.avatar_masks = _kd_avatar_masks  # type: ignore[attr-defined]
l1.batch_separable = True  # type: ignore[attr-defined]
l1.avatar_counts = _l1_avatar_counts  # type: ignore[attr-defined]
smooth_l1.batch_separable = True  # type: ignore[attr-defined]
smooth_l1.avatar_counts = _smooth_l1_avatar_counts  # type: ignore[attr-defined]
