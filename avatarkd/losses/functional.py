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
mean over K avatars from the per-element keep counts) and ``cwd``/``kd`` an ``avatar_masks`` twin (the K
avatars streamed one mask at a time); ``mse`` an ``avatar_standardised_masks`` twin (each avatar
batch-standardised with its own statistics, from per-channel sums); ``mse``, ``cwd``, ``kd``, ``dkd``
and ``pkd`` an ``avatar_stream`` twin (the K rescaled avatars consumed one at a time); all exact, see
``dropout.py``.

Every twin is attached with ``_twin_of(base, form)``, which fills the hyperparameters the caller
leaves out from the base function's own signature: the defaults live in one place, so a default
changed there holds at every K and on every path (``tests/test_losses.py`` checks it).

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

import functools
import inspect
from collections.abc import Callable, Iterable
from typing import Any

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
    kl_stream_mean,
    smooth_l1_elementwise,
    squared_error_counts,
    squared_error_standardised_masks,
    squared_error_stream,
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


def _twin_of(base: Callable[..., Tensor], form: str) -> Callable[[Callable[..., Tensor]], Callable[..., Tensor]]:
    """Attach the decorated function as ``base.<form>``, its hyperparameter defaults read from ``base``.

    The twin declares its hyperparameters keyword-only and without defaults; the attached wrapper
    fills those the caller leaves out from ``base``'s signature (``wrapper.defaults``), so that
    there is one source of defaults per loss.
    """
    params = inspect.signature(base).parameters
    defaults = {n: p.default for n, p in params.items() if p.default is not inspect.Parameter.empty}

    def attach(fn: Callable[..., Tensor]) -> Callable[..., Tensor]:
        own = inspect.signature(fn).parameters
        kw_only = {n for n, p in own.items() if p.kind is inspect.Parameter.KEYWORD_ONLY}
        if kw_only != set(defaults) or any(own[n].default is not inspect.Parameter.empty for n in kw_only):
            raise TypeError(
                f"{fn.__name__}: a twin of {base.__name__} takes exactly its hyperparameters "
                f"{sorted(defaults)} keyword-only, without defaults (they come from {base.__name__})"
            )

        @functools.wraps(fn)
        def twin(*args: Any, **kw: Any) -> Tensor:
            return fn(*args, **{**defaults, **kw})

        twin.defaults = dict(defaults)  # type: ignore[attr-defined]
        setattr(base, form, twin)
        return fn

    return attach


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


@_twin_of(mse, "avatar_mean")
def _mse_avatar_mean(student: Tensor, avatars: Tensor) -> Tensor:
    abar = avatars.mean(0)
    n = student.shape[0]
    gap = _mean_gap(lambda a: (a - abar).pow(2).flatten(1).sum(1) / n, avatars)
    return mse(student, abar) + gap


@_twin_of(mse, "avatar_counts")
def _mse_avatar_counts(student: Tensor, counts: DropoutCounts, scale: Tensor | None = None) -> Tensor:
    """mean_k mse(scale * student, scale * a_k) over K dropout avatars given by their keep counts (``dropout.py``)."""
    _check_same_shape("mse", student, counts.teacher)
    return squared_error_counts(student, counts, scale, scale) / student.shape[0]


@_twin_of(mse, "avatar_standardised_masks")
def _mse_avatar_standardised_masks(
    student: Tensor, teacher: Tensor, masks: Iterable[Tensor], num: int, keep: float, eps: float
) -> Tensor:
    """mean_k mse(student, BN(t * m_k / keep)), each avatar with its own batch statistics (``dropout.py``).

    ``student`` is already standardised (the ``batchnorm`` mode did it, with autograd, with ``eps``).
    """
    _check_same_shape("mse", student, teacher)
    return squared_error_standardised_masks(student, teacher.detach(), masks, num, keep, eps) / student.shape[0]


@_twin_of(mse, "avatar_stream")
def _mse_avatar_stream(student: Tensor, avatars: Iterable[Tensor], num: int) -> Tensor:
    """mean_k mse(student, a_k), the K avatars consumed one at a time."""
    return squared_error_stream(student, avatars, num) / student.shape[0]


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


@_twin_of(cwd, "avatar_mean")
def _cwd_avatar_mean(student: Tensor, avatars: Tensor, *, tau: float) -> Tensor:
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


@_twin_of(cwd, "avatar_masks")
def _cwd_avatar_masks(
    student: Tensor,
    teacher: Tensor,
    masks: Iterable[Tensor],
    num: int,
    keep: float,
    scale: Tensor | None = None,
    *,
    tau: float,
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


@_twin_of(cwd, "avatar_stream")
def _cwd_avatar_stream(student: Tensor, avatars: Iterable[Tensor], num: int, *, tau: float) -> Tensor:
    """mean_k cwd(student, a_k), the K avatars consumed one at a time (one softmax alive)."""
    s = _cwd_flat(student)
    n, c = s.shape[:2]
    logits = (_cwd_flat(a) if tau == 1.0 else _cwd_flat(a).mul_(1.0 / tau) for a in avatars)
    return kl_stream_mean(s, 1.0 / tau, logits, num, dim=-1).sum() * tau**2 / (n * c)


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


@_twin_of(kd, "avatar_mean")
def _kd_avatar_mean(student: Tensor, avatars: Tensor, *, tau: float) -> Tensor:
    with torch.no_grad():
        z_k = avatars / tau
        p_k, log_p_k = F.softmax(z_k, dim=2), F.log_softmax(z_k, dim=2)
        p_bar, log_bar = _log_mean_probs(p_k, log_p_k)
        gap = kl_div_probs(p_k, log_bar, dim=2, log_p=log_p_k).flatten(1).mean(1).mean() * tau**2
    main = _kd_reduce(kl_div_probs(p_bar, F.log_softmax(student / tau, dim=1), dim=1, log_p=log_bar)) * tau**2
    return main + gap


@_twin_of(kd, "avatar_masks")
def _kd_avatar_masks(
    student: Tensor,
    teacher: Tensor,
    masks: Iterable[Tensor],
    num: int,
    keep: float,
    scale: Tensor | None = None,
    *,
    tau: float,
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


@_twin_of(kd, "avatar_stream")
def _kd_avatar_stream(student: Tensor, avatars: Iterable[Tensor], num: int, *, tau: float) -> Tensor:
    """mean_k kd(student, a_k), the K avatars consumed one at a time."""
    logits = (a if tau == 1.0 else a.mul_(1.0 / tau) for a in avatars)
    return _kd_reduce(kl_stream_mean(student, 1.0 / tau, logits, num, dim=1)) * tau**2


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


def _dkd_rows(student: Tensor, target: Tensor | None) -> tuple[Tensor, Tensor, Tensor]:
    """Classes-last rows of the labelled samples (or pixels): (M, C) student, the labelled-entry mask, (M,) target.

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
    return s, keep, rows[keep]


def _dkd_avatar_rows(avatars: Tensor, keep: Tensor) -> Tensor:
    """(K, M, C) classes-last rows of (K, N, C[, H, W]) avatars at the entries ``_dkd_rows`` kept."""
    return avatars.movedim(2, -1).reshape(avatars.shape[0], -1, avatars.shape[2])[:, keep]


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
    s, keep, target = _dkd_rows(student, target)
    t = _dkd_avatar_rows(teacher.unsqueeze(0), keep)
    n = max(len(target), 1)
    b_s, log_o_s = _dkd_parts(s, target, tau)
    b_t, log_o_t = _dkd_parts(t[0], target, tau)
    tckd = kl_div_probs(b_t, b_s.clamp_min(torch.finfo(b_s.dtype).tiny).log(), dim=-1).sum() / n
    nckd = kl_div_probs(log_o_t.exp(), log_o_s, dim=-1).sum() / n
    return (alpha * tckd + beta * nckd) * tau**2


def _dkd_from_means(
    s: Tensor,
    target: Tensor,
    b_bar: Tensor,
    o_bar: Tensor,
    gaps: tuple[Tensor, Tensor],
    alpha: float,
    beta: float,
    tau: float,
) -> Tensor:
    """The student side of mean_k dkd: KL to the mean avatar's (binary, non-target) distributions plus the gaps."""
    n = max(len(target), 1)
    tiny = torch.finfo(s.dtype).tiny
    b_s, log_o_s = _dkd_parts(s, target, tau)
    tckd = kl_div_probs(b_bar, b_s.clamp_min(tiny).log(), dim=-1).sum() / n + gaps[0]
    nckd = kl_div_probs(o_bar, log_o_s, dim=-1).sum() / n + gaps[1]
    return (alpha * tckd + beta * nckd) * tau**2


@_twin_of(dkd, "avatar_mean")
def _dkd_avatar_mean(
    student: Tensor, avatars: Tensor, *, target: Tensor | None, alpha: float, beta: float, tau: float
) -> Tensor:
    s, keep, target = _dkd_rows(student, target)
    a = _dkd_avatar_rows(avatars, keep)
    n = max(len(target), 1)
    tiny = torch.finfo(student.dtype).tiny
    with torch.no_grad():
        b_k, log_o_k = _dkd_parts(a, target, tau)
        o_k = log_o_k.exp()
        b_bar, o_bar = b_k.mean(0), o_k.mean(0)
        gap_b = kl_div_probs(b_k, b_bar.clamp_min(tiny).log(), dim=-1).sum() / (n * len(a))
        gap_o = kl_div_probs(o_k, o_bar.clamp_min(tiny).log(), dim=-1).sum() / (n * len(a))
    return _dkd_from_means(s, target, b_bar, o_bar, (gap_b, gap_o), alpha, beta, tau)


def _p_log_p(p: Tensor) -> Tensor:
    """``sum p log p`` with 0 log 0 = 0 (as ``kl_div_probs`` without ``log_p``)."""
    return (p * p.clamp_min(torch.finfo(p.dtype).tiny).log()).sum()


@_twin_of(dkd, "avatar_stream")
def _dkd_avatar_stream(
    student: Tensor,
    avatars: Iterable[Tensor],
    num: int,
    *,
    target: Tensor | None,
    alpha: float,
    beta: float,
    tau: float,
) -> Tensor:
    """mean_k dkd(student, a_k), the K avatars consumed one at a time.

    Per avatar only its (binary, non-target) distributions' sums and ``sum p log p`` are kept:
    ``mean_k KL(p_k || q) = KL(pbar || q) + mean_k sum p_k log p_k - sum pbar log pbar``.
    """
    s, _, rows_target = _dkd_rows(student, target)
    n = max(len(rows_target), 1)
    with torch.no_grad():
        b_sum: Tensor | None = None
        o_sum: Tensor | None = None
        b_neg_entropy: Tensor | float = 0.0
        o_neg_entropy: Tensor | float = 0.0
        seen = 0
        for a in avatars:
            a_rows, _, _ = _dkd_rows(a, target)
            b_k, log_o_k = _dkd_parts(a_rows, rows_target, tau)
            o_k = log_o_k.exp_()
            b_neg_entropy = b_neg_entropy + _p_log_p(b_k)
            o_neg_entropy = o_neg_entropy + _p_log_p(o_k)
            b_sum = b_k if b_sum is None else b_sum.add_(b_k)
            o_sum = o_k if o_sum is None else o_sum.add_(o_k)
            seen += 1
        if seen != num or b_sum is None or o_sum is None:
            raise ValueError(f"dkd avatar_stream: expected {num} avatars, got {seen}")
        b_bar, o_bar = b_sum.div_(num), o_sum.div_(num)
        gap_b = (b_neg_entropy / num - _p_log_p(b_bar)) / n
        gap_o = (o_neg_entropy / num - _p_log_p(o_bar)) / n
    return _dkd_from_means(s, rows_target, b_bar, o_bar, (gap_b, gap_o), alpha, beta, tau)


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


@_twin_of(pkd, "avatar_mean")
def _pkd_avatar_mean(student: Tensor, avatars: Tensor, *, eps: float) -> Tensor:
    if student.dim() == 4:
        student = _resize_like(student, avatars.shape[3:])
    with torch.no_grad():
        n_k = _standardise(avatars, 2, eps)
        n_bar = n_k.mean(0)
        gap = (n_k - n_bar).pow(2).mean() / 2
    s = _standardise(student, 1, eps)
    return (s - n_bar).pow(2).mean() / 2 + gap


@_twin_of(pkd, "avatar_stream")
def _pkd_avatar_stream(student: Tensor, avatars: Iterable[Tensor], num: int, *, eps: float) -> Tensor:
    """mean_k pkd(student, a_k), the K avatars consumed one at a time (each standardised on its own)."""
    avatars = iter(avatars)
    first = next(avatars, None)
    if first is None:
        raise ValueError(f"pkd avatar_stream: expected {num} avatars, got 0")
    if student.dim() == 4:
        student = _resize_like(student, first.shape[2:])
    _check_same_shape("pkd", student, first)

    def standardised() -> Iterable[Tensor]:
        yield _standardise(first, 1, eps)
        for a in avatars:
            yield _standardise(a, 1, eps)

    s = _standardise(student, 1, eps)
    return squared_error_stream(s, standardised(), num) / (2 * s.numel())


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


@_twin_of(l1, "avatar_counts")
def _l1_avatar_counts(student: Tensor, counts: DropoutCounts, scale: Tensor | None = None) -> Tensor:
    """mean_k l1(scale * student, scale * a_k) over K dropout avatars given by their keep counts (``dropout.py``)."""
    _check_same_shape("l1", student, counts.teacher)
    return elementwise_counts(L1, student, counts, scale) / student.numel()


@_twin_of(smooth_l1, "avatar_counts")
def _smooth_l1_avatar_counts(
    student: Tensor, counts: DropoutCounts, scale: Tensor | None = None, *, beta: float
) -> Tensor:
    """mean_k smooth_l1(scale * student, scale * a_k) from the keep counts (``dropout.py``)."""
    _check_same_shape("smooth_l1", student, counts.teacher)
    return elementwise_counts(smooth_l1_elementwise(beta), student, counts, scale) / student.numel()


l1.batch_separable = True
smooth_l1.batch_separable = True
