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

Every draw compares uniform 32-bit integers with an integer threshold: the keep probability is
``1 - p`` to within 2^-33 (a float32 ``rand() >= p`` is exact to about 2^-24), and drawing 64
random bits at a time is cheaper on CPU than drawing floats.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Iterator

import torch
from torch import Tensor

from .config.distill import PERTURBATIONS, Perturbation

_TWO32 = 2**32


def uniform_bits(shape: tuple[int, ...], device: torch.device, generator: torch.Generator | None) -> Tensor:
    """Independent uniform int32 values over the whole int32 range, one per element of ``shape``.

    Drawn as full-range int64 values (two 32-bit halves each) and viewed as int32.
    """
    numel = math.prod(shape)
    words = torch.empty((numel + 1) // 2, dtype=torch.int64, device=device)
    words.random_(-(2**63), None, generator=generator)
    return words.view(torch.int32)[:numel].view(shape)


def int32_threshold(prob_below: float) -> int:
    """Threshold T with P(u < T) = ``prob_below`` (to within 2^-33) for ``u`` from ``uniform_bits``."""
    return min(max(round(prob_below * _TWO32), 0), _TWO32) - 2**31


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

    Iterating yields the K boolean masks in the order they were drawn.
    """

    def __init__(self, masks: Iterator[Tensor], num: int) -> None:
        self.num = num
        self.planes: list[Tensor] = []
        self.counts: Tensor | None = None
        for k, mask in enumerate(masks):
            bits = mask.view(torch.uint8)
            if k % 8 == 0:
                self.planes.append(bits.clone())
            else:
                self.planes[-1].bitwise_or_(bits << (k % 8))
            self.counts = bits.clone() if self.counts is None else self.counts.add_(bits)

    def __iter__(self) -> Iterator[Tensor]:
        for k in range(self.num):
            yield ((self.planes[k // 8] >> (k % 8)) & 1).view(torch.bool)


class Avatars:
    """Draws ``num`` avatars of a teacher tensor.

    Args:
        num: K, the number of avatars per call (>= 1).
        perturbation: how an avatar is made from the teacher tensor ``t``:
            ``"dropout"`` element-wise Bernoulli mask with 1/(1-p) rescale (the reference);
            ``"channel_dropout"`` the same mask per (sample, channel);
            ``"gaussian"`` ``t + p * rms_c(t) * eps``, noise relative to each channel's RMS so
            that it is scale-equivariant; ``"multiplicative"`` ``t * (1 + p * eps)``.
        p: the perturbation strength: drop probability for the dropout kinds (in [0, 1)),
            relative noise std for the noise kinds (>= 0).
        generator: optional ``torch.Generator`` so that a run is reproducible; its device is
            where the noise is drawn.

    Channels are dim 1 of ``t`` (N, C, ...); the mean of many dropout avatars tends to ``t``.
    """

    def __init__(
        self,
        num: int = 1,
        perturbation: Perturbation = "dropout",
        p: float = 0.1,
        generator: torch.Generator | None = None,
    ) -> None:
        if not isinstance(num, int) or isinstance(num, bool) or num < 1:
            raise ValueError(f"Avatars: num must be an integer >= 1, got {num!r}")
        if perturbation not in PERTURBATIONS:
            raise ValueError(f"Avatars: unknown perturbation {perturbation!r}; choose one of {PERTURBATIONS}")
        if perturbation.endswith("dropout") and not 0.0 <= p < 1.0:
            raise ValueError(f"Avatars: drop probability p must be in [0, 1), got {p}")
        if p < 0:
            raise ValueError(f"Avatars: noise strength p must be >= 0, got {p}")
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
        return self.perturbation.endswith("dropout") and self.p > 0

    @property
    def keep(self) -> float:
        """Keep probability 1 - p of one element in one dropout avatar."""
        return 1.0 - self.p

    def mask_shape(self, t: Tensor) -> tuple[int, ...]:
        """Shape of one keep-mask: ``t``'s for element dropout, (N, C, 1, ...) for channel dropout."""
        if self.perturbation == "channel_dropout":
            return (*t.shape[:2], *(1,) * (t.dim() - 2))
        return tuple(t.shape)

    def _device(self, like: Tensor) -> torch.device:
        return self.generator.device if self.generator is not None else like.device

    def _keep_mask(self, shape: tuple[int, ...], like: Tensor) -> Tensor:
        u = uniform_bits(shape, self._device(like), self.generator)
        return (u >= int32_threshold(self.p)).to(like.device)

    def keep_masks(self, t: Tensor) -> Iterator[Tensor]:
        """The K boolean keep-masks of the dropout avatars, drawn lazily, one per ``next``.

        The same generator calls in the same order as ``__call__``: for one generator state,
        avatar k is ``t * mask_k / (1 - p)`` in both.
        """
        if not self.is_dropout:
            raise ValueError(f"Avatars: keep masks exist for dropout with p > 0, not {self!r}")
        shape = self.mask_shape(t)
        for _ in range(self.num):
            yield self._keep_mask(shape, t)

    def packed_masks(self, t: Tensor) -> PackedMasks:
        """All K keep-masks drawn now (as ``keep_masks``), kept as bits with their per-element count."""
        return PackedMasks(self.keep_masks(t), self.num)

    @torch.no_grad()
    def keep_counts(self, t: Tensor) -> Tensor:
        """Per element of the mask shape, how many of the K avatars keep it: Binomial(K, 1 - p), uint8.

        One 32-bit uniform per element (not K): ``count = sum_j [u >= T_j]`` with the Binomial
        CDF's thresholds. The counts have exactly the distribution of ``sum_k mask_k`` (to within
        2^-33 per CDF value), but come from a different random stream than ``keep_masks``.
        """
        if not self.is_dropout:
            raise ValueError(f"Avatars: keep counts exist for dropout with p > 0, not {self!r}")
        if self.num > 255:
            raise ValueError("Avatars: keep counts are uint8, so at most 255 avatars")
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
        if self.perturbation.endswith("dropout"):
            scaled = t * (1.0 / self.keep)
            zero = torch.zeros((), dtype=t.dtype, device=t.device)
            if k == 1:
                return torch.where(next(self.keep_masks(t)), scaled, zero).unsqueeze(0)
            out = torch.empty(shape, dtype=t.dtype, device=t.device)
            for i, mask in enumerate(self.keep_masks(t)):
                torch.where(mask, scaled, zero, out=out[i])
            return out
        device = self._device(t)
        noise = torch.randn(
            shape, device=device, dtype=t.dtype if t.is_floating_point() else torch.float32, generator=self.generator
        ).to(t.device)
        if self.perturbation == "multiplicative":
            return t * (1.0 + self.p * noise)
        dims = tuple(d for d in range(t.dim()) if d != 1)
        rms = t.pow(2).mean(dim=dims, keepdim=True).sqrt()
        return t + self.p * rms * noise
