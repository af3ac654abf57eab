"""AvatarLoss: turns any base loss ``f(student, teacher)`` into its Avatar version.

    L_AKD(s, t) = mean_k f(s / sigma, a_k / sigma),   a_k = P(t),   k = 1..K

All K avatars are evaluated at once: through the base loss's exact ``avatar_mean`` form when it
has one (one student-side evaluation whatever K is), else by stacking avatars into the batch when
the loss is ``batch_separable``, else with ``torch.func.vmap``; a Python loop over avatars is only
the last resort.

When the avatars are drawn here (not passed in) and are keep-mask avatars (dropout kinds), the K
copies are not made at all where the base loss has an exact dropout form (``losses/dropout.py``)
that the uncertainty mode allows (the mode's ``fast_forms``; modes and perturbations are asked
what they support, never matched by name):

- ``avatar_counts`` (squared errors: one Binomial keep count per element instead of K masks);
- ``avatar_masks`` (KL losses: the K masks streamed one at a time);
- ``avatar_standardised_masks`` (squared error under ``batchnorm``: each avatar's own batch
  statistics from per-channel sums over its mask, and the mean standardised avatar, accumulated
  one mask at a time);
- ``avatar_stream`` (any loss with a streaming mean: the K rescaled avatars made one at a time,
  one alive, e.g. ``batchnorm`` with cwd, kd, pkd, dkd).

The uncertainty estimate then comes from the keep counts (``uncertainty.dropout_batch_var``). Set
``fast_paths = False`` on an instance to force the explicit K-avatar path (benchmarks and tests
compare the two).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import torch
from torch import Tensor, nn

from .avatars import Avatars
from .losses.dropout import DropoutCounts, channel_view, masked
from .registry import check_kwargs
from .uncertainty import Uncertainty, dropout_batch_var

log = logging.getLogger(__name__)

BaseLoss = Callable[..., Tensor]


class AvatarLoss(nn.Module):
    """Avatar Knowledge Distillation around a base loss.

    Args:
        base: ``f(student, teacher, **kw) -> scalar``: a function from ``avatarkd.losses`` or
            any callable / ``nn.Module`` (modules are registered so their parameters train).
        num_avatars: K, avatars per call.
        perturbation, p: how avatars are drawn (see ``Avatars``).
        uncertainty: ``"relative"`` (default: per-channel weights at the base loss's own scale;
            adopted from the evidence study, docs/results.md), ``"variance"`` (the weights with
            the change of scale), ``"batchnorm"`` (reference code) or ``"none"``.
        momentum: EMA momentum of the ``"variance"`` / ``"relative"`` estimate.
        generator: optional ``torch.Generator`` for reproducible avatars.
        base_kwargs: hyperparameters passed to ``base`` on every call (checked against its
            signature now).

    With ``num_avatars=1, p=0, uncertainty="none"`` it equals the base loss exactly.
    """

    fast_paths: bool = True  # the exact dropout forms of the base loss; False: always K explicit avatars

    def __init__(
        self,
        base: BaseLoss,
        num_avatars: int = 1,
        perturbation: str = "dropout",
        p: float = 0.1,
        uncertainty: str = "relative",
        momentum: float = 0.1,
        generator: torch.Generator | None = None,
        base_kwargs: Mapping[str, Any] | None = None,
    ) -> None:
        super().__init__()
        kwargs = dict(base_kwargs or {})
        if isinstance(base, functools.partial):
            kwargs = {**base.keywords, **kwargs}
            base = base.func
        if not callable(base):
            raise TypeError(f"AvatarLoss: base must be callable, got {type(base).__name__}")
        kwargs = check_kwargs(base, kwargs, f"base loss {getattr(base, '__name__', type(base).__name__)}")
        self.base = base  # an nn.Module base is registered as a submodule by this assignment
        self.base_kwargs = kwargs
        self.avatars = Avatars(num_avatars, perturbation, p, generator)
        self.uncertainty = Uncertainty(uncertainty, momentum)

    @property
    def num_avatars(self) -> int:
        return self.avatars.num

    @property
    def context_keys(self) -> tuple[str, ...]:
        """Per-batch inputs the base loss needs (e.g. ``("target",)``), from its registration."""
        return tuple(getattr(self.base, "context_keys", ()))

    def uncertainty_state(self) -> dict[str, Any]:
        """What the uncertainty factor holds now, for pictures and logs.

        ``sigma``: the per-channel sigma (C,) of the running estimate, or None when the mode keeps
        none (``batchnorm``, ``none``) or before the first batch; plus the mode and avatar settings.
        """
        u = self.uncertainty
        sigma = u.running_var.sqrt().detach().cpu() if u.running_var.numel() else None
        return {
            "mode": u.mode,
            "sigma": sigma,
            "num_avatars": self.avatars.num,
            "perturbation": self.avatars.perturbation,
            "p": self.avatars.p,
        }

    @torch.no_grad()
    def uncertainty_map(self, teacher: Tensor, generator: torch.Generator | None = None) -> Tensor | None:
        """Where this loss's avatars disagree with ``teacher`` (N, C, H, W): E_k (a_k - t)^2 averaged over C.

        Draws fresh avatars from ``generator`` (default: a fixed seed), never from the training
        stream, so a picture does not change what training does next. None when avatars are the
        teacher itself (p = 0) or the feature is not spatial.
        """
        if teacher.dim() != 4 or self.avatars.p == 0:
            return None
        drawer = Avatars(
            self.avatars.num,
            self.avatars.perturbation,
            self.avatars.p,
            generator or torch.Generator(device=teacher.device).manual_seed(0),
        )
        return (drawer(teacher) - teacher.unsqueeze(0)).pow(2).mean(dim=(0, 2))

    def extra_repr(self) -> str:
        name = getattr(self.base, "__name__", None)
        return f"base={name}, avatars={self.avatars!r}" if name else f"avatars={self.avatars!r}"

    def forward(self, student: Tensor, teacher: Tensor, avatars: Tensor | None = None, **kw: Any) -> Tensor:
        """``kw`` (e.g. ``target=`` for dkd) is passed to the base loss with ``base_kwargs``."""
        teacher = teacher.detach()
        kw = {**self.base_kwargs, **kw}
        if avatars is None:
            form = self.dropout_form()
            if form is not None:
                return getattr(self, "_" + form)(getattr(self.base, form), student, teacher, kw)
            avatars = self.avatars(teacher)
        elif avatars.shape[1:] != teacher.shape:
            raise ValueError(f"AvatarLoss: avatars shape {tuple(avatars.shape)} is not (K, *{tuple(teacher.shape)})")
        avatars = avatars.detach()
        s, a = self.uncertainty(student, teacher, avatars)
        return self._mean_over_avatars(s, a, kw)

    def _mean_over_avatars(self, s: Tensor, a: Tensor, kw: dict[str, Any]) -> Tensor:
        k = a.shape[0]
        if k == 1:  # the base loss itself: a mean form would only add passes
            return self.base(s, a[0], **kw)
        mean_form = getattr(self.base, "avatar_mean", None)
        if mean_form is not None:
            return mean_form(s, a, **kw)
        per_sample = any(isinstance(v, Tensor) for v in kw.values())
        if getattr(self.base, "batch_separable", False) and not per_sample:
            s_rep = s.repeat(k, *([1] * (s.dim() - 1)))
            return self.base(s_rep, a.reshape(k * a.shape[1], *a.shape[2:]), **kw)
        try:
            losses = torch.func.vmap(lambda av: self.base(s, av, **kw), randomness="same")(a)
        except Exception as err:
            log.debug("vmap over avatars failed (%s); looping over %d avatars", err, k)
            losses = torch.stack([self.base(s, a[i], **kw) for i in range(k)])
        return losses.mean()

    # ------------------------------------------------------------------ exact dropout forms
    def dropout_form(self) -> str | None:
        """Which exact dropout form drawn avatars go through (a twin's name, e.g. ``"avatar_counts"``) or None.

        None (the explicit K-avatar path) when ``fast_paths`` is off, the perturbation has no keep
        mask (or p = 0), or the base loss has none of the forms the uncertainty mode allows
        (``UncertaintyKind.fast_forms``, best first).
        """
        if not self.fast_paths or not self.avatars.is_dropout:
            return None
        for form in self.uncertainty.kind.fast_forms:
            if callable(getattr(self.base, form, None)):
                return form
        return None

    def _sigma(self, batch_var: Callable[[], Tensor], dtype: torch.dtype) -> Tensor | None:
        """Sigma per channel for both sides (None without an estimate); ``batch_var`` only runs when needed."""
        if not self.uncertainty.kind.keeps_estimate:
            return None
        return self.uncertainty.sigma_from(batch_var).to(dtype)

    def _avatar_scale(self, batch_var: Callable[[], Tensor], dtype: torch.dtype) -> Tensor | None:
        """1/sigma per channel for both sides (None without an estimate); ``batch_var`` only runs when needed."""
        sigma = self._sigma(batch_var, dtype)
        return None if sigma is None else sigma.reciprocal()

    def _needs_batch_var(self) -> bool:
        u = self.uncertainty
        return u.kind.keeps_estimate and (u.training or u.running_var.numel() == 0)

    def _avatar_counts(self, twin: BaseLoss, student: Tensor, teacher: Tensor, kw: dict[str, Any]) -> Tensor:
        av = self.avatars
        counts = DropoutCounts(teacher, av.keep_counts(teacher), av.num, av.keep)
        scale = self._avatar_scale(lambda: dropout_batch_var(counts), student.dtype)
        return twin(student, counts, scale=scale, **kw)

    def _masks_and_sigma(self, student: Tensor, teacher: Tensor) -> tuple[Iterable[Tensor], Tensor | None]:
        """The K keep-masks and the per-channel sigma they imply (when sigma needs this batch, all drawn first)."""
        av = self.avatars
        if self._needs_batch_var():  # sigma depends on this batch's masks: draw them all first, as bits
            packed = av.packed_masks(teacher, teacher.dtype)
            counts = packed.counts
            sigma = self._sigma(
                lambda: dropout_batch_var(DropoutCounts(teacher, counts, av.num, av.keep)), student.dtype
            )
            return packed, sigma
        # drawn one at a time while the loss streams over them
        return av.keep_masks(teacher, teacher.dtype), self._sigma(lambda: torch.empty(0), student.dtype)

    def _avatar_masks(self, twin: BaseLoss, student: Tensor, teacher: Tensor, kw: dict[str, Any]) -> Tensor:
        av = self.avatars
        masks, sigma = self._masks_and_sigma(student, teacher)
        scale = None if sigma is None else sigma.reciprocal()
        return twin(student, teacher, masks, av.num, av.keep, scale=scale, **kw)

    def _avatar_standardised_masks(
        self, twin: BaseLoss, student: Tensor, teacher: Tensor, kw: dict[str, Any]
    ) -> Tensor:
        av = self.avatars
        s = self.uncertainty.kind.student(student)
        eps = self.uncertainty.kind.eps  # type: ignore[attr-defined]  # a mode offering this form has one
        return twin(s, teacher, av.keep_masks(teacher, teacher.dtype), av.num, av.keep, eps, **kw)

    def _avatar_stream(self, twin: BaseLoss, student: Tensor, teacher: Tensor, kw: dict[str, Any]) -> Tensor:
        """The K rescaled avatars made one at a time (same draws as the explicit path) into the base's stream form."""
        av, kind = self.avatars, self.uncertainty.kind
        if kind.per_avatar:
            s = kind.student(student)
            masks: Iterable[Tensor] = av.keep_masks(teacher, teacher.dtype)
            rescale: Callable[[Tensor], Tensor] = kind.avatar
        else:
            masks, sigma = self._masks_and_sigma(student, teacher)
            if sigma is None:
                s, rescale = student, _identity
            else:  # as the explicit path: both sides divided by sigma
                view = channel_view(sigma, student.dim())
                s = student / view
                rescale = functools.partial(_divide_, by=view)

        def avatars() -> Iterator[Tensor]:  # the teacher-sized `scaled` lives only while avatars are made
            scaled = teacher * (1.0 / av.keep)  # as in Avatars.__call__
            for mask in masks:
                yield rescale(masked(scaled, mask))

        return twin(s, avatars(), av.num, **kw)


def _identity(x: Tensor) -> Tensor:
    return x


def _divide_(x: Tensor, by: Tensor) -> Tensor:
    return x.div_(by)
