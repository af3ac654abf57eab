"""Exact means over K dropout avatars, without materialising the K copies of the teacher.

A dropout avatar of the teacher tensor ``t`` is ``a_k = t * m_k / q`` with keep-masks
``m_k ~ Bernoulli(q)``, ``q = 1 - p``. AKD needs ``mean_k f(s, a_k)``; stacking the K avatars costs
K teacher-sized tensors and K passes over each of them. Three exact shortcuts:

**Squared error: only the keep count matters.** For one element let ``c = sum_k m_k`` be how many
avatars keep it and ``abar = t c / (K q)`` the mean avatar. Then

    mean_k (s - a_k)^2 = (s - abar)^2 + mean_k (a_k - abar)^2,
    mean_k (a_k - abar)^2 = (t / q)^2 (c/K)(1 - c/K) = t^2 c (K - c) / (K q)^2,

so the value and the gradient ``2 (s - abar)`` depend on the masks only through ``c``, which is
Binomial(K, q) and can be drawn with one random number per element (``Avatars.keep_counts``). With
``kept = t c`` (the sum of the K unscaled masked copies), summed per channel:
``sum t^2 c (K - c) = K <t, kept> - <kept, kept>``: two per-channel dot products, no per-avatar pass
(``DropoutCounts`` holds them, so that the variance estimate reuses them).

**Any element-wise loss: two evaluations.** An element of a dropout avatar is ``t/q`` or 0, so for
an element-wise loss (L1, smooth L1) ``mean_k l(s, a_k) = (c/K) l(s, t/q) + (1 - c/K) l(s, 0)``.

**KL divergence: stream the avatars.** A softmax does not commute with the mean over avatars, so
each avatar's softmax is needed; but only two things of it are kept,

    mean_k KL(p_k || q_s) = mean_k sum p_k log p_k  -  sum pbar log q_s,

the per-row mean negative entropy and the mean probability ``pbar``. The avatars are visited one at a
time, so memory does not grow with K, and the student is seen once. An avatar's logit is the
teacher's or 0, so with one shift per row for all avatars the exponentials are computed once and
each avatar costs a few multiply-adds and row sums (``_kl_dropout_mean_shared_exp``, on CPU; the
per-avatar log-softmax where that shift could underflow, and on CUDA). The student's gradient is
``(q_s - pbar)`` times the logit scale, written out in ``_CrossEntropyToMean``.
The value is a difference of two sums of the size of ``log(positions)``, so in float32 its relative
rounding grows as the divergence gets small (the gradient has no such difference); the tests bound
it at 1e-5 against float64 at their sizes.

**Batch-standardised avatars: per-channel sums.** The reference mode (``batchnorm``) standardises
each avatar with its own batch statistics, ``a_k' = (x_k - mu_k) w_k``, ``x_k = t m_k / q``,
``w_k = 1 / sqrt(var_k + eps)``. A squared error needs only the mean standardised avatar and
``mean_k ||a_k'||^2``: per channel ``mu_k`` and ``var_k`` come from the sums of ``x_k`` and
``x_k^2``, ``||a_k'||^2 = M var_k / (var_k + eps)`` (M elements per channel), and
``abar' = (sum_k w_k x_k - sum_k w_k mu_k) / K``: one masked copy alive, a few passes per avatar, no
standardised avatar ever written (``standardised_dropout_mean``). The variance comes from the raw
moments, whose cancellation is bounded for a dropout avatar: ``mu^2 / var <= q / p`` (9 at p = 0.1).

**Any loss with a streaming mean.** ``squared_error_stream`` and ``kl_stream_mean`` take the K
(rescaled) avatars one at a time from an iterator, so that a mode that rescales each avatar on its
own (``batchnorm``) never holds K copies.

All of these are exact rewrites of the K-avatar mean (``tests/test_fast_paths.py`` checks value, gradient and
distribution against the explicit K-avatar path).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterable, Iterator

import torch
from torch import Tensor


def channel_dot(x: Tensor, y: Tensor) -> Tensor:
    """Per-channel ``sum x * y`` over every dim but dim 1 (channels): shape (C,).

    A squared norm when ``y is x`` (one pass); ``torch.linalg.vecdot`` is several times slower
    than a product and a sum on CPU.
    """
    rows = x.unsqueeze(-1) if x.dim() == 2 else x.flatten(2)  # (N, C, positions)
    if y is x:
        return torch.linalg.vector_norm(rows, dim=-1).square_().sum(0)
    other = y.unsqueeze(-1) if y.dim() == 2 else y.flatten(2)
    return (rows * other).sum(-1).sum(0)


BATCHNORM_EPS = 1e-5  # the eps of the batchnorm uncertainty mode's standardisation (F.batch_norm's default)


def masked(x: Tensor, mask: Tensor, out: Tensor | None = None) -> Tensor:
    """``where(mask, x, 0)`` for a keep-mask (boolean, or 0/1 in x's dtype; broadcast against ``x``), as a product.

    The same values (a dropped negative element becomes -0.0, equal to 0), several times faster on
    CPU than ``torch.where`` with a boolean condition, which is not vectorised there.
    """
    return torch.mul(x, mask.view(torch.uint8) if mask.dtype == torch.bool else mask, out=out)


def channel_sum(x: Tensor) -> Tensor:
    """Per-channel sum over every dim but dim 1: shape (C,)."""
    rows = x.unsqueeze(-1) if x.dim() == 2 else x.flatten(2)
    return rows.sum(-1).sum(0)


def channel_view(v: Tensor, ndim: int) -> Tensor:
    """A (C,) tensor shaped to broadcast along dim 1 of an ``ndim``-dim tensor."""
    return v.view(1, -1, *(1,) * (ndim - 2))


class DropoutCounts:
    """K dropout avatars of ``teacher`` summarised by their per-element keep counts.

    ``counts`` (broadcastable to the teacher: per element, or per (sample, channel) for channel
    dropout) says how many of the ``num`` avatars keep each element; ``keep`` is 1 - p. Everything
    a squared error over the K avatars and the variance estimate need is here, each computed once:
    ``kept = t * counts`` (the sum of the K unscaled masked copies) and per-channel dot products.
    """

    def __init__(self, teacher: Tensor, counts: Tensor, num: int, keep: float) -> None:
        self.teacher = teacher.detach()
        self.counts = counts
        self.num = num
        self.keep = keep
        self._dots: dict[str, Tensor] = {}

    @functools.cached_property
    def kept(self) -> Tensor:
        # a product of mixed dtypes takes a slow, unvectorised path: convert the counts first
        return self.teacher * self.counts.to(self.teacher.dtype)

    def free_kept(self) -> None:
        """Drop ``kept`` (a teacher-sized tensor) once nothing will need it again."""
        self.__dict__.pop("kept", None)

    def dot(self, which: str) -> Tensor:
        """Per-channel ``<t, kept>`` (``"tk"``), ``<kept, kept>`` (``"kk"``) or ``<t, t>`` (``"tt"``)."""
        if which not in self._dots:
            t, kept = self.teacher, self.kept
            x, y = {"tk": (t, kept), "kk": (kept, kept), "tt": (t, t)}[which]
            self._dots[which] = channel_dot(x, y)
        return self._dots[which]


class _SquaredDistance(torch.autograd.Function):
    """``sum w_c (student - coef * kept)^2`` (``w`` per channel, or 1) with its gradient
    ``2 w (student - coef * kept)`` written out.

    Autograd would keep the difference and its square and take three passes backwards for what is
    one. ``coef`` is a number or a per-channel tensor broadcast along dim 1; ``weight`` a (C,) tensor
    or None.
    """

    @staticmethod
    def forward(ctx, student: Tensor, kept: Tensor, coef: Tensor | float, weight: Tensor | None) -> Tensor:
        if isinstance(coef, Tensor):
            diff = torch.addcmul(student, kept, coef, value=-1.0)
        else:
            diff = torch.add(student, kept, alpha=-coef)
        ctx.save_for_backward(diff, weight)
        if weight is None:
            flat = diff.view(-1)
            return torch.dot(flat, flat)
        return (channel_dot(diff, diff) * weight).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor | None, None, None, None]:
        diff, weight = ctx.saved_tensors
        if weight is None:
            return diff * (2.0 * grad), None, None, None
        return diff * channel_view(weight * (2.0 * grad), diff.dim()), None, None, None


def squared_error_counts(
    student: Tensor, counts: DropoutCounts, student_scale: Tensor | None = None, avatar_scale: Tensor | None = None
) -> Tensor:
    """``mean_k sum (student * student_scale - a_k * avatar_scale)^2`` over the K dropout avatars.

    The scales are optional per-channel (C,) factors (the uncertainty factor 1/sigma). Sum over all
    elements, divided by nothing. With ``g`` the student scale the sum is ``sum_c g_c^2 (s - abar *
    avatar_scale / g)^2 + spread``: one pass makes the difference, one the per-channel sums.
    """
    norm = 1.0 / (counts.num * counts.keep)
    with torch.no_grad():
        if avatar_scale is None:  # totals only: BLAS dot products
            kept = counts.kept.reshape(-1)
            spread = counts.num * torch.dot(counts.teacher.reshape(-1), kept) - torch.dot(kept, kept)
        else:  # sum t^2 c (K - c) per channel, weighted
            spread = ((counts.num * counts.dot("tk") - counts.dot("kk")) * avatar_scale.pow(2)).sum()
        spread = spread * norm**2
    ndim = student.dim()
    if student_scale is None:
        coef: Tensor | float = norm if avatar_scale is None else channel_view(avatar_scale * norm, ndim)
        weight = None
    else:
        target = norm * (avatar_scale if avatar_scale is not None else torch.ones_like(student_scale))
        coef, weight = channel_view(target / student_scale, ndim), student_scale.pow(2)
    return _SquaredDistance.apply(student, counts.kept, coef, weight) + spread


@torch.no_grad()
def _streamed_mean_and_square(avatars: Iterable[Tensor], num: int, what: str) -> tuple[Tensor, Tensor]:
    """``mean_k a_k`` (in the first avatar's memory) and ``mean_k ||a_k||^2`` of K avatars consumed one at a time."""
    total: Tensor | None = None
    square: Tensor | None = None
    seen = 0
    for a in avatars:
        flat = a.reshape(-1)
        sq = torch.dot(flat, flat)
        square = sq if square is None else square.add_(sq)
        total = a if total is None else total.add_(a)
        seen += 1
    if seen != num or total is None or square is None:
        raise ValueError(f"{what}: expected {num} avatars, got {seen}")
    return total.div_(num), square.div_(num)


def squared_error_stream(student: Tensor, avatars: Iterable[Tensor], num: int) -> Tensor:
    """``mean_k sum (student - a_k)^2`` over K avatars yielded one at a time (the iterator's tensors are overwritten).

    ``= sum (student - abar)^2 + mean_k ||a_k||^2 - ||abar||^2``: one avatar alive at a time, one
    student-side pass. With one avatar the spread is exactly 0.
    """
    abar, square = _streamed_mean_and_square(avatars, num, "squared_error_stream")
    with torch.no_grad():
        flat = abar.reshape(-1)
        spread = square - torch.dot(flat, flat) if num > 1 else torch.zeros_like(square)
    return _SquaredDistance.apply(student, abar, 1.0, None) + spread


@torch.no_grad()
def standardised_dropout_mean(
    teacher: Tensor, masks: Iterable[Tensor], num: int, keep: float, eps: float = BATCHNORM_EPS
) -> tuple[Tensor, Tensor]:
    """Mean over the K dropout avatars of their batch-standardised versions, and ``mean_k ||a_k'||^2``.

    ``a_k' = (x_k - mu_k) / sqrt(var_k + eps)`` per channel (biased variance, over every dim but 1),
    ``x_k = where(m_k, t / q, 0)``: what ``batch_standardise`` gives each explicit avatar. Per mask:
    the masked copy, its per-channel sum and squared norm, and one multiply-add into the running
    ``sum_k w_k x_k``; see the module docstring.
    """
    c = teacher.shape[1]
    per_channel = teacher.numel() // c
    scaled = teacher * (1.0 / keep)  # as in Avatars.__call__
    acc: Tensor | None = None
    offset = torch.zeros(c, dtype=torch.float64, device=teacher.device)  # sum_k w_k mu_k
    square = torch.zeros((), dtype=torch.float64, device=teacher.device)  # sum_k ||a_k'||^2
    seen = 0
    for mask in masks:
        x = masked(scaled, mask)
        mean = channel_sum(x).double().div_(per_channel)
        var = channel_dot(x, x).double().div_(per_channel).sub_(mean.square()).clamp_min_(0.0)
        w = var.add(eps).rsqrt_()
        square += (var * w.square()).sum() * per_channel
        offset += w * mean
        w_view = channel_view(w.to(teacher.dtype), teacher.dim())
        acc = x.mul_(w_view) if acc is None else acc.addcmul_(x, w_view)
        seen += 1
        del x
    if seen != num or acc is None:
        raise ValueError(f"standardised_dropout_mean: expected {num} masks, got {seen}")
    mean_avatar = acc.sub_(channel_view(offset.to(teacher.dtype), teacher.dim())).div_(num)
    return mean_avatar, square.div_(num).to(_acc_dtype(teacher))


def _acc_dtype(x: Tensor) -> torch.dtype:
    return torch.promote_types(x.dtype, torch.float32)


def squared_error_standardised_masks(
    student: Tensor, teacher: Tensor, masks: Iterable[Tensor], num: int, keep: float, eps: float = BATCHNORM_EPS
) -> Tensor:
    """``mean_k sum (student - a_k')^2``, ``a_k'`` the k-th dropout avatar batch-standardised with its own statistics.

    ``student`` is already standardised (it carries the gradient through that). Exact for the same
    masks as the explicit path (``standardised_dropout_mean``); with one avatar the spread is 0.
    """
    abar, square = standardised_dropout_mean(teacher, masks, num, keep, eps)
    with torch.no_grad():
        flat = abar.reshape(-1)
        spread = square - torch.dot(flat, flat).to(square.dtype) if num > 1 else torch.zeros_like(square)
    return _SquaredDistance.apply(student, abar, 1.0, None) + spread.to(student.dtype)


class ElementwiseLoss:
    """An element-wise loss ``l(x, y) = f(x - y)`` given by ``f`` and its derivative ``df``, both
    allowed to overwrite their argument (they are only ever given temporaries)."""

    def __init__(self, f: Callable[[Tensor], Tensor], df: Callable[[Tensor], Tensor]) -> None:
        self.f, self.df = f, df


class _ElementwiseCountsMean(torch.autograd.Function):
    """``sum over elements of mean_k l(x, a_k * scale)`` with ``x = student * scale``.

    An element of a dropout avatar is ``t/q`` (kept by c of the K avatars) or 0, so the mean over the
    avatars is ``(c/K) f(x - y) + (1 - c/K) f(x)`` with ``y = scale * t / q``; the gradient the same
    with ``df``. Nothing is saved but references to the inputs: backward recomputes ``x``, ``y`` and
    the weights, so that memory stays at a few temporaries whatever K is.
    """

    @staticmethod
    def _mean(student: Tensor, counts: DropoutCounts, scale: Tensor | None, f: Callable[[Tensor], Tensor]) -> Tensor:
        """``(c/K) f(x - y) + (1 - c/K) f(x)`` per element, with as few teacher-sized temporaries alive as possible."""
        view = None if scale is None else channel_view(scale, student.dim())
        x = student if view is None else student * view
        y = counts.teacher * (1.0 / counts.keep) if view is None else counts.teacher * (view * (1.0 / counts.keep))
        kept = f(y.sub_(x).neg_())  # x - y, in y's memory
        dropped = f(x.clone() if x is student else x)
        return dropped.lerp_(kept, counts.counts.to(student.dtype).mul_(1.0 / counts.num))

    @staticmethod
    def forward(ctx, student: Tensor, counts: DropoutCounts, scale: Tensor | None, loss: ElementwiseLoss) -> Tensor:
        counts.free_kept()  # made for the variance estimate, not needed here
        ctx.save_for_backward(student, scale)
        ctx.counts, ctx.loss = counts, loss
        return _ElementwiseCountsMean._mean(student, counts, scale, loss.f).sum()

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        student, scale = ctx.saved_tensors
        out = _ElementwiseCountsMean._mean(student, ctx.counts, scale, ctx.loss.df)
        if scale is not None:
            out.mul_(channel_view(scale, student.dim()))
        return out.mul_(grad), None, None, None


def elementwise_counts(
    loss: ElementwiseLoss, student: Tensor, counts: DropoutCounts, scale: Tensor | None = None
) -> Tensor:
    """``sum over elements of mean_k loss(student * scale, a_k * scale)`` over K dropout avatars.

    Exact, value and gradient, for any element-wise loss (L1, smooth L1), at the cost of two
    evaluations whatever K is (see ``_ElementwiseCountsMean``).
    """
    return _ElementwiseCountsMean.apply(student, counts, scale, loss)


def _abs_(d: Tensor) -> Tensor:
    return d.abs_()


def _sign_(d: Tensor) -> Tensor:
    return d.sign_()


L1 = ElementwiseLoss(_abs_, _sign_)


def smooth_l1_elementwise(beta: float) -> ElementwiseLoss:
    """Huber with transition ``beta``: ``0.5 d^2 / beta`` below it, ``|d| - 0.5 beta`` above (torch's smooth L1)."""
    if beta == 0:
        return L1

    def f(d: Tensor) -> Tensor:
        a = d.abs_()
        return torch.where(a < beta, a * a * (0.5 / beta), a - 0.5 * beta)

    def df(d: Tensor) -> Tensor:
        return d.div_(beta).clamp_(-1.0, 1.0)

    return ElementwiseLoss(f, df)


class _CrossEntropyToMean(torch.autograd.Function):
    """Per row: ``-sum pbar * log_softmax(mult * student)`` over ``dim``; gradient ``mult (softmax - pbar)``.

    ``pbar`` sums to 1 along ``dim``, which is what makes the gradient that simple.
    """

    @staticmethod
    def forward(ctx, student: Tensor, mult: Tensor | float, pbar: Tensor, dim: int) -> Tensor:
        logits = student if isinstance(mult, float) and mult == 1.0 else student * mult
        log_q = torch.log_softmax(logits, dim)
        ctx.save_for_backward(log_q, pbar)
        ctx.mult, ctx.dim = mult, dim
        return -(pbar * log_q).sum(dim)

    @staticmethod
    def backward(ctx, grad: Tensor) -> tuple[Tensor, None, None, None]:
        log_q, pbar = ctx.saved_tensors
        out = torch.exp(log_q)
        out.sub_(pbar).mul_(grad.unsqueeze(ctx.dim) * ctx.mult)
        return out, None, None, None


def kl_dropout_mean(
    student: Tensor, student_mult: Tensor | float, kept_logits: Tensor, masks: Iterable[Tensor], num: int, dim: int
) -> Tensor:
    """Per row, ``mean_k KL(softmax(z_k) || softmax(student_mult * student))`` along ``dim``.

    ``student_mult`` is a number or a tensor that broadcasts to the student (temperature and sigma).

    ``z_k = where(mask_k, kept_logits, 0)``: the avatar's logits are the teacher's (already divided
    by q, the temperature and sigma) where the mask keeps an element and 0 where it drops it. The
    K masks are consumed one at a time. Returns the rows (``dim`` reduced), differentiable in
    ``student``.
    """

    held = [kept_logits]  # the caller passes it without keeping it: freed as soon as it is used up
    del kept_logits
    if held[0].device.type == "cpu":
        shared = _kl_dropout_mean_shared_exp(held, masks, num, dim)
        if shared is not None:
            pbar, neg_entropy = shared
            return _CrossEntropyToMean.apply(student, student_mult, pbar, dim) + neg_entropy

    def logits() -> Iterator[Tensor]:
        kept = held.pop()
        for mask in masks:
            yield masked(kept, mask)

    return kl_stream_mean(student, student_mult, logits(), num, dim)


def _shared_shift_limit(dtype: torch.dtype) -> float:
    """Largest ``|max_row kept|`` for which one shift serves every avatar of a row.

    Each row's value then carries a rounding of about ``|max_row kept| * eps`` (the shift is
    subtracted back), as a log-softmax of logits that size does anyway; 30 keeps it within a few
    1e-6 in float32 and far from underflow (``exp(-30)``); float64's range allows far more.
    """
    return 30.0 if torch.finfo(dtype).bits <= 32 else 600.0


@torch.no_grad()
def _kl_dropout_mean_shared_exp(
    held: list[Tensor], masks: Iterable[Tensor], num: int, dim: int
) -> tuple[Tensor, Tensor] | None:
    """``pbar`` and the per-row ``mean_k sum p_k log p_k`` of K dropout avatars with one ``exp`` for all of them.

    An avatar's logit is the kept one or 0, so with one shift ``c`` per row for every avatar
    (``c = max(0, max_row kept)``, an upper bound of every avatar's row maximum),
    ``exp(z_k - c) = lerp(e0, E, m_k)``, ``E = exp(kept - c)``, ``e0 = exp(-c)`` (exact: never
    ``e0 + (E - e0)``, which loses a small ``E`` next to ``e0``): the exponentials are computed
    once, and each avatar costs a blend, a product and two row sums, no ``exp`` or ``log`` per
    element. Per row, ``S_k = sum exp(z_k - c)``, ``p_k = exp(z_k - c) / S_k`` and
    ``sum p_k log p_k = <p_k, z_k> - c - log S_k`` with ``<exp(z_k - c), z_k> = <m_k, E kept>``.
    Exact (the same softmax written with another shift) as long as no avatar's largest term can
    underflow and the shift stays small: ``c - max_row z_k <= |max_row kept|`` must stay below
    ``_shared_shift_limit``. None when it does not (``kl_stream_mean`` then shifts each avatar by
    its own maximum), or on CUDA, where the check would wait for the device. ``held`` holds the
    kept logits; they are taken out (freed) once used, unless None is returned.
    """
    kept_logits = held[0]
    if kept_logits.device.type != "cpu" or kept_logits.numel() == 0:
        return None
    top = kept_logits.amax(dim, keepdim=True)
    # read through NumPy's view of the CPU tensor: no device exists to wait for (this form is CPU-only)
    if not top.abs().amax().float().numpy() < _shared_shift_limit(kept_logits.dtype):
        return None
    held.clear()
    shift = top.clamp_min_(0.0)
    exp_kept = torch.exp(kept_logits - shift)
    exp_dropped = torch.exp(-shift).expand_as(exp_kept)
    weighted = kept_logits.mul_(exp_kept)  # E * kept: <exp(z_k - c), z_k> = <m_k, weighted>; kept is ours
    del kept_logits
    pbar: Tensor | None = None
    neg_entropy: Tensor | None = None
    seen = 0
    for mask in masks:
        keep = mask if mask.dtype == exp_kept.dtype else mask.to(exp_kept.dtype)  # ours: overwritten below
        # exp(z_k - c): lerp is exact at weight 0 and 1 (E where kept, e0 where dropped), never e0 + (E - e0)
        e = torch.lerp(exp_dropped, exp_kept, keep)
        total = e.sum(dim, keepdim=True)  # S_k, a sum of positive terms
        dot = (keep.mul_(weighted) if keep.shape == weighted.shape else keep * weighted).sum(dim, keepdim=True)
        inv = total.reciprocal()
        row = dot.mul_(inv).sub_(shift).sub_(total.log_())  # <p_k, z_k> - c - log S_k
        neg_entropy = row if neg_entropy is None else neg_entropy.add_(row)
        pbar = e.mul_(inv) if pbar is None else pbar.addcmul_(e, inv)
        seen += 1
        del keep, e
    if seen != num or pbar is None or neg_entropy is None:
        raise ValueError(f"kl_dropout_mean: expected {num} masks, got {seen}")
    return pbar.div_(num), neg_entropy.squeeze(dim).div_(num)


def kl_stream_mean(
    student: Tensor, student_mult: Tensor | float, logits: Iterable[Tensor], num: int, dim: int
) -> Tensor:
    """Per row, ``mean_k KL(softmax(z_k) || softmax(student_mult * student))`` along ``dim``, the K avatar
    logits ``z_k`` yielded one at a time (each is overwritten). Returns the rows, differentiable in ``student``."""
    with torch.no_grad():
        pbar: Tensor | None = None
        p_log_p: Tensor | None = None  # sum over avatars of p_k log p_k, element-wise: summed once at the end
        seen = 0
        for z in logits:
            log_p = torch.log_softmax(z, dim)
            p = torch.exp(log_p, out=z)
            if p_log_p is None:
                p_log_p = log_p.mul_(p)
                pbar = p
            else:
                p_log_p.addcmul_(p, log_p)
                pbar.add_(p)  # type: ignore[union-attr]
            seen += 1
            del z, log_p, p
        if seen != num or pbar is None or p_log_p is None:
            raise ValueError(f"kl_stream_mean: expected {num} avatars, got {seen}")
        pbar.div_(num)
        neg_entropy = p_log_p.sum(dim).div_(num)
        del p_log_p
    return _CrossEntropyToMean.apply(student, student_mult, pbar, dim) + neg_entropy
