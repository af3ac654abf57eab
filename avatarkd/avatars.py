"""Avatars: cheap perturbed copies of a teacher tensor, drawn fresh at every iteration.

They are made from the teacher output that was already computed, so they cost no teacher forward
pass. All K avatars are returned as one batched tensor ``(K, *t.shape)`` so that whatever uses
them can work on all of them at once.

Dropout avatars can also be drawn without materialising the K copies, for the exact fast paths of
``AvatarLoss``:

- ``keep_masks(t)`` yields the K keep-masks one at a time, from the same random draws (same
  generator calls, same order) as ``__call__``: a loss can stream over the avatars;
- ``keep_counts(t)`` draws, per element, how many of the K avatars keep it: a Binomial(K, 1-p)
  count from ONE 32-bit uniform (inverse CDF), which is all that a squared-error loss and the
  variance estimate depend on (see ``losses/dropout.py``);
- ``packed_masks(t)`` draws the K masks at once and keeps them as bits (one byte per element for
  K <= 8) plus their per-element count, for a loss that needs the count before the masks.

Every draw compares uniform integers with an integer threshold, drawn 64 random bits at a time
(cheaper on CPU than drawing floats). A keep-mask uses 16 bits per element when ``p`` is a multiple
of 2^-16 to within 1e-4 of p (p = 0.1 is drawn as 6554 / 2^16, 6e-6 away; F.dropout's float32
draw is about 2^-24 from p): a quarter of a random word per mask instead of half, which made the
random draws the largest single cost of K = 4 masks. Other ``p`` (e.g. 0.01) use 32 bits, within
2^-33 of p; keep counts always use 32 bits, so that a rare count keeps its probability.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator
from typing import ClassVar

import torch
from torch import Tensor

from .losses.dropout import masked
from .registry import PERTURBATIONS, register_perturbation

_INT_OF_BITS = {16: torch.int16, 32: torch.int32}
# a drop probability is drawn with 16 bits when 2^16 p is this close to an integer, relative to p
_P16_TOLERANCE = 1e-4


def uniform_bits(
    shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None, bits: int = 32
) -> Tensor:
    """Independent uniform int16/int32 values over the type's whole range, one per element of ``shape``.

    Drawn as full-range int64 words and viewed as ``bits``-bit integers.
    """
    numel = math.prod(shape)
    per_word = 64 // bits
    words = torch.empty((numel + per_word - 1) // per_word, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)
    return words.view(_INT_OF_BITS[bits])[:numel].view(shape)


def int_threshold(prob_below: float, bits: int = 32) -> int:
    """Threshold T with P(u < T) = ``prob_below`` (to within 2^-(bits+1)) for ``u`` from ``uniform_bits``."""
    span = 2**bits
    return min(max(round(prob_below * span), 0), span) - span // 2


def int32_threshold(prob_below: float) -> int:
    """Threshold T with P(u < T) = ``prob_below`` (to within 2^-33) for 32-bit ``u`` from ``uniform_bits``."""
    return int_threshold(prob_below, 32)


def mask_bits(p: float) -> int:
    """Bits per element of a keep-mask draw for drop probability ``p``: 16 when 2^16 p is (nearly) whole.

    Never 16 when ``p`` would round to 0 or 1 there (nothing, or everything, dropped).
    """
    scaled = p * 2**16
    whole = round(scaled)
    return 16 if 0 < whole < 2**16 and abs(whole - scaled) <= _P16_TOLERANCE * scaled else 32


def binomial_thresholds(num: int, keep: float) -> list[int]:
    """T_j, j = 0..num-1, such that count = sum_j [u >= T_j] is Binomial(num, keep) for uniform int32 ``u``.

    ``count > j`` happens with probability ``1 - F(j)``, F the Binomial CDF: the inverse-CDF draw.
    """
    cdf, out = 0.0, []
    for j in range(num):
        cdf += math.comb(num, j) * keep**j * (1.0 - keep) ** (num - j)
        out.append(int32_threshold(min(cdf, 1.0)))
    return out


class PackedMasks:
    """K keep-masks stored as bits (``ceil(K/8)`` bytes per element) plus their per-element count.

    For a loss that needs the count (the uncertainty estimate) before it streams over the masks,
    at a quarter of a feature map's memory for K <= 8. Iterating yields the K masks in the order
    they were drawn, boolean or as 0/1 in ``dtype`` (a copy from the unpacked bytes, no comparison).
    """

    def __init__(self, masks: Iterator[Tensor], num: int, dtype: torch.dtype = torch.bool) -> None:
        self.num, self.dtype = num, dtype
        self.planes: list[Tensor] = []
        counts: Tensor | None = None
        for k, mask in enumerate(masks):
            bits = mask.view(torch.uint8)
            if k % 8 == 0:
                self.planes.append(bits.clone())
            else:  # bit k % 8 is still 0: adding 2^(k % 8) sets it, in one pass without a shifted copy
                self.planes[-1].add_(bits, alpha=1 << (k % 8))
            counts = bits.clone() if counts is None else counts.add_(bits)
        if counts is None:
            raise ValueError("PackedMasks: no masks drawn (num_avatars must be >= 1)")
        self.counts: Tensor = counts

    def __iter__(self) -> Iterator[Tensor]:
        for k in range(self.num):
            bits = torch.bitwise_right_shift(self.planes[k // 8], k % 8).bitwise_and_(1)
            if self.dtype == torch.bool:
                yield bits.view(torch.bool)
            else:
                yield torch.empty(bits.shape, dtype=self.dtype, device=bits.device).copy_(bits)


def _compare(u: Tensor, threshold: int, dtype: torch.dtype) -> Tensor:
    """``u >= threshold`` as a boolean, or as 0/1 written in ``dtype`` by the comparison itself (no conversion pass)."""
    if dtype == torch.bool:
        return torch.ge(u, threshold)
    return torch.ge(u, threshold, out=torch.empty(u.shape, dtype=dtype, device=u.device))


class PerturbationKind:
    """One kind of avatar: what it is, which strengths ``p`` are valid, and how it is drawn.

    Subclass it and register it with ``@register_perturbation("name")``: the config then accepts
    ``perturbation: name``, ``Avatars`` draws it, and ``AvatarLoss`` picks its code path by asking
    the class, never by the name. A keep-mask kind (``keep_mask = True``) is ``t * mask / (1 - p)``
    with a Bernoulli(1 - p) mask of shape ``mask_shape(t)`` (broadcast over ``t``): it gets the exact
    dropout fast paths (keep counts, streamed masks) and needs no ``draw``. Any other kind
    implements ``draw`` and goes through the explicit K-avatar path.
    """

    name: ClassVar[str] = ""
    keep_mask: ClassVar[bool] = False
    p_max: ClassVar[float] = math.inf  # exclusive upper bound of p (1 for a drop probability)
    p_meaning: ClassVar[str] = "noise strength"

    @classmethod
    def check_p(cls, p: float) -> str | None:
        """Why ``p`` is not a valid strength for this kind, or None when it is."""
        if p < 0:
            return f"{cls.p_meaning} p must be >= 0 (perturbation {cls.name!r}), got {p}"
        if p >= cls.p_max:
            return f"{cls.p_meaning} p must be < {cls.p_max:g} (in [0, {cls.p_max:g}) for {cls.name!r}), got {p}"
        return None

    def mask_shape(self, t: Tensor) -> tuple[int, ...]:
        """Shape of one keep-mask (keep-mask kinds), broadcastable to ``t``."""
        raise NotImplementedError(f"perturbation {self.name!r} has no keep mask")

    def draw(self, t: Tensor, num: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
        """``num`` avatars of ``t`` (p > 0) as one (num, *t.shape) tensor; noise drawn on ``device``."""
        raise NotImplementedError(f"perturbation {self.name!r} must implement draw()")


def _noise(t: Tensor, num: int, generator: torch.Generator | None, device: torch.device) -> Tensor:
    dtype = t.dtype if t.is_floating_point() else torch.float32
    return torch.randn((num, *t.shape), device=device, dtype=dtype, generator=generator).to(t.device)


@register_perturbation("dropout")
class Dropout(PerturbationKind):
    """Element-wise Bernoulli mask with the 1/(1-p) rescale (the reference)."""

    keep_mask = True
    p_max = 1.0
    p_meaning = "drop probability"

    def mask_shape(self, t: Tensor) -> tuple[int, ...]:
        return tuple(t.shape)


@register_perturbation("channel_dropout")
class ChannelDropout(Dropout):
    """The same mask for a whole (sample, channel)."""

    def mask_shape(self, t: Tensor) -> tuple[int, ...]:
        return (*t.shape[:2], *(1,) * (t.dim() - 2))


@register_perturbation("gaussian")
class Gaussian(PerturbationKind):
    """``t + p * rms_c(t) * eps``: noise relative to each channel's RMS, so that it is scale-equivariant."""

    def draw(self, t: Tensor, num: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
        noise = _noise(t, num, generator, device)
        dims = tuple(d for d in range(t.dim()) if d != 1)
        rms = t.pow(2).mean(dim=dims, keepdim=True).sqrt()
        return t + p * rms * noise


@register_perturbation("multiplicative")
class Multiplicative(PerturbationKind):
    """``t * (1 + p * eps)``."""

    def draw(self, t: Tensor, num: int, p: float, generator: torch.Generator | None, device: torch.device) -> Tensor:
        return t * (1.0 + p * _noise(t, num, generator, device))


class Avatars:
    """Draws ``num`` avatars of a teacher tensor.

    Args:
        num: K, the number of avatars per call (>= 1).
        perturbation: how an avatar is made from the teacher tensor ``t``, a registered
            ``PerturbationKind`` name: ``"dropout"`` element-wise Bernoulli mask with 1/(1-p)
            rescale (the reference); ``"channel_dropout"`` the same mask per (sample, channel);
            ``"gaussian"`` ``t + p * rms_c(t) * eps``, noise relative to each channel's RMS so
            that it is scale-equivariant; ``"multiplicative"`` ``t * (1 + p * eps)``.
        p: the perturbation strength: drop probability for the dropout kinds (in [0, 1)),
            relative noise std for the noise kinds (>= 0); the kind checks its range.
        generator: optional ``torch.Generator`` so that a run is reproducible; its device is
            where the noise is drawn.

    Channels are dim 1 of ``t`` (N, C, ...); the mean of many dropout avatars tends to ``t``.
    """

    def __init__(
        self,
        num: int = 1,
        perturbation: str = "dropout",
        p: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(f"Avatars: num must be an integer >= 1, got {num!r}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(
                f"Avatars: unknown perturbation {perturbation!r}; choose one of {', '.join(PERTURBATIONS.names())}"
            )
        self.kind: PerturbationKind = PERTURBATIONS.get(perturbation)()
        problem = self.kind.check_p(p)
        if problem:
            raise ValueError(f"Avatars: {problem}")
        self.num = num
        self.perturbation = perturbation
        self.p = float(p)
        self.generator = generator

    def __repr__(self) -> str:
        return f"Avatars(num={self.num}, perturbation={self.perturbation!r}, p={self.p})"

    def __deepcopy__(self, memo: dict) -> Avatars:
        # Copies (e.g. one per FPN level) share the random stream instead of replaying it.
        clone = copy.copy(self)
        memo[id(self)] = clone
        return clone

    # ------------------------------------------------------------------ dropout draws
    @property
    def is_dropout(self) -> bool:
        """Dropout kinds with something to drop: the ones with mask/count draws."""
        return self.kind.keep_mask and self.p > 0

    @property
    def keep(self) -> float:
        """Keep probability 1 - p of one element in one dropout avatar."""
        return 1.0 - self.p

    def mask_shape(self, t: Tensor) -> tuple[int, ...]:
        """Shape of one keep-mask: ``t``'s for element dropout, (N, C, 1, ...) for channel dropout."""
        return self.kind.mask_shape(t)

    def _device(self, like: Tensor) -> torch.device:
        return self.generator.device if self.generator is not None else like.device

    @property
    def mask_bits(self) -> int:
        """Random bits per element of one keep-mask (16 or 32, see the module docstring)."""
        return mask_bits(self.p)

    def _keep_mask(self, shape: tuple[int, ...], like: Tensor, dtype: torch.dtype = torch.bool) -> Tensor:
        bits = self.mask_bits
        u = uniform_bits(shape, self._device(like), self.generator, bits)
        return _compare(u, int_threshold(self.p, bits), dtype).to(like.device)

    def keep_masks(self, t: Tensor, dtype: torch.dtype = torch.bool) -> Iterator[Tensor]:
        """The K keep-masks of the dropout avatars, drawn lazily, one per ``next``.

        The same generator calls in the same order as ``__call__``: for one generator state,
        avatar k is ``t * mask_k / (1 - p)`` in both. Boolean, or 0/1 in ``dtype`` (e.g. the
        teacher's, so that applying a mask is a plain product).
        """
        if not self.is_dropout:
            raise ValueError(f"Avatars: keep masks exist for dropout with p > 0, not {self!r}")
        shape = self.mask_shape(t)
        for _ in range(self.num):
            yield self._keep_mask(shape, t, dtype)

    def packed_masks(self, t: Tensor, dtype: torch.dtype = torch.bool) -> PackedMasks:
        """All K keep-masks drawn now (as ``keep_masks``), kept as bits with their per-element count;
        iterated as booleans or as 0/1 in ``dtype``."""
        return PackedMasks(self.keep_masks(t), self.num, dtype)

    @torch.no_grad()
    def keep_counts(self, t: Tensor) -> Tensor:
        """Per element of the mask shape, how many of the K avatars keep it: Binomial(K, 1 - p), uint8.

        One 32-bit uniform per element (not K): ``count = sum_j [u >= T_j]`` with the Binomial
        CDF's thresholds. The counts have exactly the distribution of ``sum_k mask_k`` (to within
        2^-33 per CDF value), but come from a different random stream than ``keep_masks`` (for
        K = 1 the count is the mask of ``keep_masks``' draw).
        """
        if not self.is_dropout:
            raise ValueError(f"Avatars: keep counts exist for dropout with p > 0, not {self!r}")
        if self.num > 255:
            raise ValueError("Avatars: keep counts are uint8, so at most 255 avatars")
        if self.num == 1:  # the count is the one mask: the same draw as keep_masks, at its cost
            return self._keep_mask(self.mask_shape(t), t, torch.uint8)
        u = uniform_bits(self.mask_shape(t), self._device(t), self.generator)
        thresholds = binomial_thresholds(self.num, self.keep)
        counts = (u >= thresholds[0]).view(torch.uint8)
        for threshold in thresholds[1:]:
            counts.add_((u >= threshold).view(torch.uint8))
        return counts.to(t.device)

    # ------------------------------------------------------------------ the K avatars
    @torch.no_grad()
    def __call__(self, t: Tensor) -> Tensor:
        if t.dim() < 2:
            raise ValueError(f"Avatars: expected (N, C, ...) tensor, got shape {tuple(t.shape)}")
        t = t.detach()
        k = self.num
        shape = (k, *t.shape)
        if self.p == 0:  # every perturbation is the identity: no noise to draw
            return t.unsqueeze(0).expand(shape)
        if self.kind.keep_mask:
            scaled = t * (1.0 / self.keep)
            if k == 1:
                return masked(scaled, next(self.keep_masks(t))).unsqueeze(0)
            out = torch.empty(shape, dtype=scaled.dtype, device=t.device)
            for i, mask in enumerate(self.keep_masks(t)):
                masked(scaled, mask, out=out[i])
            return out
        return self.kind.draw(t, k, self.p, self.generator, self._device(t))
