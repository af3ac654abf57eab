"""The exact dropout fast paths of AvatarLoss against the explicit K-avatar path.

Three kinds of evidence (``losses/dropout.py`` has the derivations):

1. Same random state, same numbers. The KL forms (``cwd``, ``kd``) stream the very masks that
   ``Avatars.__call__`` draws (same generator calls, same order), so with one seed the fast and the
   explicit path must agree in value and gradient to rounding (float64: 1e-10 relative).
2. Same keep counts, same numbers. The count forms (``mse``, ``MGD``, ``l1``, ``smooth_l1``) depend
   on the masks only through the per-element keep count; given the counts of explicit masks they must agree in
   value and gradient, and the variance estimate from counts must equal the explicit one.
3. Same distribution. The counts are drawn from one uniform per element instead of K masks, so
   fast and explicit paths no longer share their random state; their draws must agree in
   distribution. Each statistical test below states its tolerance and is shown to reject a
   deliberately wrong variant (K - 1 avatars, or p off by a little) with the same statistic.
"""

from __future__ import annotations

import copy
import functools
import math

import pytest
import torch

from avatarkd import AvatarLoss, Avatars
from avatarkd import losses as L
from avatarkd.avatars import Dropout, binomial_thresholds, int32_threshold, int_threshold, mask_bits
from avatarkd.config import AKDConfig
from avatarkd.losses import MGD, MasKD
from avatarkd.losses.dropout import DropoutCounts
from avatarkd.registry import register_perturbation, register_uncertainty
from avatarkd.uncertainty import BatchNormMode, RelativeMode, Uncertainty, dropout_batch_var

Z_LIMIT = 5.0  # two-sided normal tail beyond 5 standard errors: 5.7e-7 per statistic


def _pair(base, seed: int = 3, **kw) -> tuple[AvatarLoss, AvatarLoss]:
    """The same AvatarLoss twice, fast and explicit, each with its own generator seeded alike."""
    fast = AvatarLoss(base, generator=torch.Generator().manual_seed(seed), **kw)
    slow = copy.deepcopy(fast)
    slow.fast_paths = False
    slow.avatars.generator = torch.Generator().manual_seed(seed)
    return fast, slow


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max().clamp_min(1e-300)).item()


# ------------------------------------------------------------------ which path runs
def test_dropout_form_is_chosen_per_base_loss_and_setting():
    assert AvatarLoss(L.mse, 4).dropout_form() == "avatar_counts"
    assert AvatarLoss(MGD(3), 4).dropout_form() == "avatar_counts"
    assert AvatarLoss(L.l1, 4).dropout_form() == "avatar_counts"
    assert AvatarLoss(L.smooth_l1, 4).dropout_form() == "avatar_counts"
    assert AvatarLoss(L.cwd, 4).dropout_form() == "avatar_masks"
    assert AvatarLoss(L.kd, 4, perturbation="channel_dropout").dropout_form() == "avatar_masks"
    assert AvatarLoss(L.pkd, 4).dropout_form() == "avatar_stream"
    assert AvatarLoss(L.dkd, 4).dropout_form() == "avatar_stream"
    # per-avatar statistics: no count or mask form, but standardised masks or a stream
    assert AvatarLoss(L.mse, 4, uncertainty="batchnorm").dropout_form() == "avatar_standardised_masks"
    assert AvatarLoss(MGD(3), 4, uncertainty="batchnorm").dropout_form() == "avatar_standardised_masks"
    assert AvatarLoss(L.cwd, 4, uncertainty="batchnorm").dropout_form() == "avatar_stream"
    for akd in (
        AvatarLoss(MasKD(3), 4),  # no exact dropout form
        AvatarLoss(L.l1, 4, uncertainty="batchnorm"),  # counts need one common factor
        AvatarLoss(L.mse, 4, perturbation="gaussian"),
        AvatarLoss(L.mse, 4, p=0.0),
    ):
        assert akd.dropout_form() is None
    forced = AvatarLoss(L.mse, 4)
    forced.fast_paths = False
    assert forced.dropout_form() is None


# ------------------------------------------------------------------ 1. KL forms: same random state
@pytest.mark.parametrize("perturbation", ["dropout", "channel_dropout"])
@pytest.mark.parametrize("uncertainty", ["none", "variance", "relative"])
@pytest.mark.parametrize("name,kw", [("cwd", {"tau": 2.0}), ("kd", {"tau": 3.0})])
def test_kl_fast_path_equals_explicit_avatars_for_the_same_seed(name, kw, uncertainty, perturbation, rng):
    base = getattr(L, name)
    s = torch.randn(3, 5, 6, 7, generator=rng, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(3, 5, 6, 7, generator=rng, dtype=torch.float64) * 2).relu()
    fast, slow = _pair(base, num_avatars=4, p=0.2, perturbation=perturbation, uncertainty=uncertainty, base_kwargs=kw)
    assert fast.dropout_form() == "avatar_masks"
    for training in (True, True, False):  # two EMA steps, then eval mode (masks streamed, not packed)
        fast.train(training)
        slow.train(training)
        got, want = fast(s, t), slow(s, t)
        (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
        assert _rel(got, want) < 1e-10, (got.item(), want.item())
        assert _rel(g_got, g_want) < 1e-10
    if uncertainty != "none":
        assert _rel(fast.uncertainty.running_var, slow.uncertainty.running_var) < 1e-12


def test_kl_fast_path_in_float32_stays_within_float32_rounding(rng):
    s = torch.randn(2, 8, 20, 30, generator=rng)
    t = (s + 0.5 * torch.randn(2, 8, 20, 30, generator=rng)).relu()
    for base, kw in ((L.cwd, {"tau": 1.0}), (L.kd, {"tau": 4.0})):
        fast, slow = _pair(base, num_avatars=4, base_kwargs=kw)
        slow.double()
        s32 = s.clone().requires_grad_()
        s64 = s.double().requires_grad_()
        got, want = fast(s32, t), slow(s64, t.double())
        (g_got,), (g_want,) = torch.autograd.grad(got, s32), torch.autograd.grad(want, s64)
        assert _rel(got.double(), want) < 1e-5 and _rel(g_got.double(), g_want) < 1e-5, base.__name__


# ------------------------------------------------------------------ 2. squared-error forms: same counts
def _counts_of(avatars: torch.Tensor, perturbation: str) -> torch.Tensor:
    kept = avatars != 0
    if perturbation == "channel_dropout":  # a channel is kept whole or dropped whole
        kept = kept.flatten(3).any(-1)[..., None, None]
    return kept.sum(0)


@pytest.mark.parametrize("perturbation", ["dropout", "channel_dropout"])
@pytest.mark.parametrize("uncertainty", ["none", "variance", "relative"])
@pytest.mark.parametrize("which", ["mse", "mgd", "l1", "smooth_l1"])
def test_counts_form_equals_explicit_avatars_for_the_same_counts(which, uncertainty, perturbation, rng):
    s = torch.randn(2, 4, 5, 6, generator=rng, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(2, 4, 5, 6, generator=rng, dtype=torch.float64) + 0.5).relu() + 0.1  # no exact zeros
    base = (
        MGD(4, alpha=1.0, generator=torch.Generator().manual_seed(7)).double() if which == "mgd" else getattr(L, which)
    )
    kw = {"beta": 0.5} if which == "smooth_l1" else {}
    akd = AvatarLoss(base, num_avatars=5, p=0.3, perturbation=perturbation, uncertainty=uncertainty, base_kwargs=kw)
    explicit = copy.deepcopy(akd)
    avatars = Avatars(5, perturbation, 0.3, rng)(t)
    counts = DropoutCounts(t, _counts_of(avatars, perturbation), 5, 0.7)
    if which == "mgd":
        explicit.base.rng.manual_seed(7)  # the same spatial mask on both sides
    want = explicit(s, t, avatars=avatars)
    scale = akd._avatar_scale(lambda: dropout_batch_var(counts), s.dtype)
    got = akd.base.avatar_counts(s, counts, scale=scale, **kw)
    (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
    assert _rel(got, want) < 1e-10 and _rel(g_got, g_want) < 1e-10
    if uncertainty != "none":
        assert _rel(akd.uncertainty.running_var, explicit.uncertainty.running_var) < 1e-12


def test_variance_estimate_from_counts_equals_the_explicit_estimate(rng):
    t = torch.randn(3, 6, 4, 5, generator=rng, dtype=torch.float64) * torch.arange(1, 7, dtype=torch.float64).view(
        1, 6, 1, 1
    )
    for k, p in ((1, 0.1), (4, 0.1), (7, 0.45)):
        avatars = Avatars(k, p=p, generator=rng)(t)
        counts = DropoutCounts(t, _counts_of(avatars, "dropout"), k, 1 - p)
        assert _rel(dropout_batch_var(counts), Uncertainty._batch_var(t, avatars)) < 1e-12


def test_with_one_avatar_the_count_is_the_mask_of_the_same_draw():
    t = torch.rand(2, 3, 8, 8) + 0.1
    drawn = Avatars(1, p=0.3, generator=torch.Generator().manual_seed(5))(t)[0]
    counts = Avatars(1, p=0.3, generator=torch.Generator().manual_seed(5)).keep_counts(t)
    assert torch.equal(counts.bool(), drawn != 0)


# ------------------------------------------------------------------ 3. distributions
def _two_sample_z(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """z statistics for equal means and equal variances of two independent samples (float64).

    Means: ``(mx - my) / sqrt(vx/n + vy/m)`` (central limit theorem). Variances: the sample variance
    of n draws has variance ``(mu4 - sigma^4) / n`` to first order (mu4 the fourth central moment),
    so ``(vx - vy) / sqrt((mu4x - vx^2)/n + (mu4y - vy^2)/m)``. Both are standard normal when the two
    distributions are equal; |z| > 5 happens with probability 5.7e-7 each.
    """
    x, y = x.double(), y.double()
    mx, my, vx, vy = x.mean(), y.mean(), x.var(), y.var()
    z_mean = (mx - my) / (vx / len(x) + vy / len(y)).sqrt()
    m4x, m4y = (x - mx).pow(4).mean(), (y - my).pow(4).mean()
    z_var = (vx - vy) / ((m4x - vx**2) / len(x) + (m4y - vy**2) / len(y)).sqrt()
    return z_mean.item(), z_var.item()


def test_keep_counts_have_the_distribution_of_summed_masks():
    """Per count value j, two-sample z of its frequency: (f - g) / sqrt(2 pi (1 - pi) / M).

    Under equal distributions each z is standard normal (M = 2e5 elements, the smallest expected
    cell M * pi_0 = 20 for K=4, p=0.1, large enough for the normal approximation); the test allows
    |z| < 5 for all K+1 cells (false alarm <= 3e-6). A count of K-1 masks, or p = 0.12, must fail.
    """
    shape, k, p = (2, 10, 100, 100), 4, 0.1
    t = torch.ones(shape)
    m = t.numel()

    def freq(counts: torch.Tensor) -> torch.Tensor:
        return torch.bincount(counts.flatten().long(), minlength=k + 1).double() / m

    pmf = torch.tensor([math.comb(k, j) * (1 - p) ** j * p ** (k - j) for j in range(k + 1)], dtype=torch.float64)
    se = (2 * pmf * (1 - pmf) / m).sqrt()
    fast = freq(Avatars(k, p=p, generator=torch.Generator().manual_seed(0)).keep_counts(t))

    def explicit(num: int, pp: float) -> torch.Tensor:
        masks = Avatars(num, p=pp, generator=torch.Generator().manual_seed(1)).keep_masks(t)
        return freq(sum(mk.to(torch.uint8) for mk in masks))

    assert ((fast - explicit(k, p)) / se).abs().max() < Z_LIMIT
    assert ((fast - explicit(k - 1, p)) / se).abs().max() > Z_LIMIT  # one avatar short: z about 440
    assert ((fast - explicit(k, 0.12)) / se).abs().max() > Z_LIMIT  # p off by 0.02: z about 38


def test_count_path_gradients_have_the_distribution_of_explicit_avatars():
    """Elements with the same (student, teacher) values give independent draws of one gradient.

    With uncertainty ``none`` the gradient of element e is ``2 (s - abar_e) / N``, a function of
    that element's keep count only, so one call yields M iid draws: the mean/variance z tests of
    ``_two_sample_z`` apply directly (M = 60000 per path). The mean gradient does not depend on K or
    p (E[abar] = t), its spread does: K - 1 avatars (z about -34 here) and p = 0.21 instead of 0.2
    (z about -7) must both fail the variance test.
    """
    shape, k, p = (2, 3, 100, 100), 4, 0.2
    t = torch.full(shape, 2.0, dtype=torch.float64)

    def grads(fast_paths: bool, kk: int = k, pp: float = p, seed: int = 0) -> torch.Tensor:
        s = torch.full(shape, 0.5, dtype=torch.float64, requires_grad=True)
        akd = AvatarLoss(L.mse, kk, p=pp, uncertainty="none", generator=torch.Generator().manual_seed(seed))
        akd.fast_paths = fast_paths
        (g,) = torch.autograd.grad(akd(s, t), s)
        return g.flatten()

    fast = grads(True)
    z_mean, z_var = _two_sample_z(fast, grads(False, seed=1))
    assert abs(z_mean) < Z_LIMIT and abs(z_var) < Z_LIMIT, (z_mean, z_var)
    assert abs(_two_sample_z(fast, grads(False, kk=k - 1, seed=1))[1]) > Z_LIMIT
    assert abs(_two_sample_z(fast, grads(False, pp=p + 0.01, seed=1))[1]) > Z_LIMIT


@pytest.mark.parametrize("uncertainty", ["none", "variance"])
def test_count_path_loss_values_have_the_distribution_of_explicit_avatars(uncertainty):
    """Loss values over R = 3000 fresh draws per path, mean and variance z tests (``_two_sample_z``).

    ``variance`` mode uses momentum 1 so that each draw's sigma comes from its own batch only (the
    draws stay independent). A version with K - 1 avatars must fail the variance test (z about -10
    in both modes with these seeds).
    """
    g = torch.Generator().manual_seed(11)
    s = torch.randn(1, 3, 4, 4, generator=g, dtype=torch.float64)
    t = torch.rand(1, 3, 4, 4, generator=g, dtype=torch.float64) + 0.5
    k, draws = 3, 3000

    def values(fast_paths: bool, kk: int, seed: int) -> torch.Tensor:
        akd = AvatarLoss(
            L.mse, kk, p=0.25, uncertainty=uncertainty, momentum=1.0, generator=torch.Generator().manual_seed(seed)
        )
        akd.fast_paths = fast_paths
        with torch.no_grad():
            return torch.stack([akd(s, t) for _ in range(draws)])

    fast = values(True, k, 0)
    z_mean, z_var = _two_sample_z(fast, values(False, k, 1))
    assert abs(z_mean) < Z_LIMIT and abs(z_var) < Z_LIMIT, (z_mean, z_var)
    assert abs(_two_sample_z(fast, values(False, k - 1, 1))[1]) > Z_LIMIT


# ------------------------------------------------------------------ the draws themselves
def test_binomial_thresholds_give_the_binomial_cdf_to_32_bits():
    for k, q in ((1, 0.9), (4, 0.9), (8, 0.5), (16, 0.97)):
        thresholds = binomial_thresholds(k, q)
        assert thresholds == sorted(thresholds)
        cdf = 0.0
        for j, threshold in enumerate(thresholds):
            cdf += math.comb(k, j) * q**j * (1 - q) ** (k - j)
            assert abs((threshold + 2**31) / 2**32 - cdf) <= 2**-32
    assert int32_threshold(0.0) == -(2**31) and int32_threshold(1.0) == 2**31


def test_packed_masks_replay_the_streamed_masks():
    t = torch.rand(2, 3, 5, 5)  # 150 elements: not a whole number of 64-bit words at 16 or 32 bits
    for k, p, bits in ((3, 0.25, 16), (9, 0.1, 16), (3, 0.01, 32)):  # one and two bit planes
        assert Avatars(k, p=p).mask_bits == bits
        streamed = list(Avatars(k, p=p, generator=torch.Generator().manual_seed(2)).keep_masks(t))
        packed = Avatars(k, p=p, generator=torch.Generator().manual_seed(2)).packed_masks(t)
        assert all(torch.equal(a, b) for a, b in zip(streamed, packed, strict=True))
        as_float = Avatars(k, p=p, generator=torch.Generator().manual_seed(2)).packed_masks(t, torch.float32)
        assert all(torch.equal(a.float(), b) for a, b in zip(streamed, as_float, strict=True))
        assert torch.equal(packed.counts, sum(m.to(torch.uint8) for m in streamed))


def test_mask_bits_follow_how_exactly_p_fits_16_bits():
    ps = (0.1, 0.05, 0.2, 0.3, 0.5, 0.99998, 0.01, 0.001, 1e-6, 1 - 2**-18)
    assert [mask_bits(p) for p in ps] == [16] * 6 + [32] * 4
    t = torch.ones(4096)
    for p in (0.99998, 1 - 2**-18):  # nearly everything dropped, never everything kept
        kept = sum(m.sum() for m in Avatars(2, p=p, generator=torch.Generator().manual_seed(0)).keep_masks(t))
        assert kept <= 2
    for p in (0.1, 0.05, 0.2, 0.3):  # the drawn keep probability within 1e-4 of p, relative
        assert abs((int_threshold(p, 16) + 2**15) / 2**16 - p) <= 1e-4 * p


# ------------------------------------------------------------------ memory
def _peak_tensor_bytes(fn) -> int | None:
    """Highest sum of live CPU tensor bytes allocated inside ``fn`` (torch.profiler memory timeline)."""
    from torch.profiler import ProfilerActivity, profile

    try:
        with profile(
            activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True
        ) as prof:
            fn()
        timeline = prof._memory_profile().timeline
    except Exception:
        return None
    live = peak = 0
    for _, action, _, size in timeline:
        if action.name == "CREATE":
            live += size
        elif action.name == "DESTROY":
            live -= size
        peak = max(peak, live)
    return peak


@pytest.mark.parametrize("name", ["mse", "l1", "cwd", "kd"])
def test_akd_with_four_avatars_needs_at_most_one_feature_map_more_than_its_base(name):
    base = getattr(L, name)
    s = torch.randn(2, 16, 24, 24, requires_grad=True)
    t = torch.randn(2, 16, 24, 24).relu()
    akd = AvatarLoss(base, 4)

    def step(fn):
        return lambda: fn(s, t).backward()

    step(akd)()  # first batch: the running estimate exists from now on
    peaks = {label: _peak_tensor_bytes(step(fn)) for label, fn in (("base", base), ("akd", akd))}
    if None in peaks.values():
        pytest.skip("torch.profiler memory timeline unavailable")
    feature_map = s.numel() * s.element_size()
    assert peaks["akd"] - peaks["base"] <= feature_map, {k: v / feature_map for k, v in peaks.items()}
    explicit = copy.deepcopy(akd)
    explicit.fast_paths = False
    assert _peak_tensor_bytes(step(explicit)) - peaks["base"] > 3 * feature_map  # the K copies the fast path avoids


# ------------------------------------------------------------------ streamed forms: same random state
def _stream_case(name: str, shape: tuple[int, ...], rng: torch.Generator):
    s = torch.randn(*shape, generator=rng, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(*shape, generator=rng, dtype=torch.float64) * 2 + 0.3).relu()
    kw: dict = {}
    if name == "dkd":
        target = torch.randint(0, shape[1], (shape[0], *shape[2:]), generator=rng)
        if target.dim() > 1:
            target[0, 0] = -1  # an ignored pixel
        kw["target"] = target
    base = MGD(shape[1], alpha=1.0, generator=torch.Generator().manual_seed(7)).double() if name == "mgd" else None
    return s, t, kw, base or getattr(L, name)


STREAM_SHAPES = [(3, 5, 6, 7), (2, 4, 9, 3), (6, 7)]


@pytest.mark.parametrize("k", [1, 2, 4, 5])
@pytest.mark.parametrize("uncertainty", ["batchnorm", "relative", "none"])
@pytest.mark.parametrize("name", ["mse", "mgd", "cwd", "kd", "pkd", "dkd"])
def test_streamed_forms_equal_explicit_avatars_for_the_same_seed(name, uncertainty, k, rng):
    """``avatar_standardised_masks`` and ``avatar_stream`` draw the explicit path's masks (same generator
    calls, same order): value and gradient agree to rounding (float64) at every K, shape and mode."""
    for shape in STREAM_SHAPES:
        if len(shape) == 2 and name in ("cwd", "mgd"):
            continue  # spatial losses
        s, t, kw, base = _stream_case(name, shape, rng)
        fast, slow = _pair(base, num_avatars=k, p=0.25, uncertainty=uncertainty)
        form = fast.dropout_form()
        if uncertainty == "batchnorm":
            assert form == ("avatar_standardised_masks" if name in ("mse", "mgd") else "avatar_stream")
        elif name in ("pkd", "dkd"):
            assert form == "avatar_stream"
        else:
            assert form in ("avatar_counts", "avatar_masks")
            continue  # covered above
        for training in (True, False):
            fast.train(training)
            slow.train(training)
            if name == "mgd":
                fast.base.rng.manual_seed(7)
                slow.base.rng.manual_seed(7)
            got, want = fast(s, t, **kw), slow(s, t, **kw)
            (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
            assert _rel(got, want) < 1e-10, (name, shape, got.item(), want.item())
            assert _rel(g_got, g_want) < 1e-10, (name, shape)


@pytest.mark.parametrize("name", ["mse", "cwd", "pkd"])
def test_batchnorm_fast_paths_in_float32_stay_within_float32_rounding(name, rng):
    s = torch.randn(2, 8, 20, 30, generator=rng)
    t = (s + 0.5 * torch.randn(2, 8, 20, 30, generator=rng) + 1.0).relu()
    fast, slow = _pair(getattr(L, name), num_avatars=4, uncertainty="batchnorm")
    slow.double()
    s32 = s.clone().requires_grad_()
    s64 = s.double().requires_grad_()
    got, want = fast(s32, t), slow(s64, t.double())
    (g_got,), (g_want,) = torch.autograd.grad(got, s32), torch.autograd.grad(want, s64)
    assert _rel(got.double(), want) < 1e-5 and _rel(g_got.double(), g_want) < 1e-4, name


def test_standardised_masks_are_exact_for_a_teacher_far_from_zero(rng):
    """The per-avatar variance comes from raw moments; a dropout avatar bounds their cancellation."""
    t = torch.randn(2, 3, 8, 8, generator=rng, dtype=torch.float64) * 0.01 + 50.0
    s = torch.randn(2, 3, 8, 8, generator=rng, dtype=torch.float64, requires_grad=True)
    fast, slow = _pair(L.mse, num_avatars=4, p=0.1, uncertainty="batchnorm")
    got, want = fast(s, t), slow(s, t)
    assert _rel(got, want) < 1e-10


# ------------------------------------------------------------------ new modes and perturbations, declared here
@register_uncertainty("test_relative_floor", replace=True)
class RelativeWithHigherFloor(RelativeMode):
    """``relative`` with sigma^2 floored at 20% of its channel mean instead of 1%."""

    def sigma(self, var: torch.Tensor, rel_floor: float) -> torch.Tensor:
        return super().sigma(var, 0.2)


@register_uncertainty("test_batchnorm_eps", replace=True)
class BatchNormLargeEps(BatchNormMode):
    """``batchnorm`` with a larger eps: the standardised-masks form must use the mode's own."""

    eps = 0.05


@register_perturbation("test_spatial_dropout", replace=True)
class SpatialDropout(Dropout):
    """A keep-mask perturbation that drops whole positions (every channel at once)."""

    def mask_shape(self, t: torch.Tensor) -> tuple[int, ...]:
        return (t.shape[0], 1, *t.shape[2:])


def test_a_new_mode_and_a_new_perturbation_take_the_fast_paths(rng):
    s = torch.randn(2, 6, 5, 7, generator=rng, dtype=torch.float64, requires_grad=True)
    t = (torch.randn(2, 6, 5, 7, generator=rng, dtype=torch.float64) + 0.5).relu() * torch.arange(
        1, 7, dtype=torch.float64
    ).view(1, 6, 1, 1)
    t[:, 0] = 0.0  # a dead channel: the floor decides its sigma
    # the new mode keeps an estimate and rescales by one factor: counts for mse, masks for cwd
    cases = [
        (L.mse, "test_relative_floor", "dropout", "avatar_counts"),
        (L.cwd, "test_relative_floor", "dropout", "avatar_masks"),
        (L.cwd, "relative", "test_spatial_dropout", "avatar_masks"),
        (L.mse, "batchnorm", "test_spatial_dropout", "avatar_standardised_masks"),
        (L.mse, "test_batchnorm_eps", "dropout", "avatar_standardised_masks"),
        (L.cwd, "test_batchnorm_eps", "dropout", "avatar_stream"),
        (L.pkd, "none", "test_spatial_dropout", "avatar_stream"),
    ]
    for base, mode, perturbation, form in cases:
        fast, slow = _pair(base, num_avatars=4, p=0.3, uncertainty=mode, perturbation=perturbation)
        assert fast.dropout_form() == form, (base.__name__, mode, perturbation)
        if form == "avatar_counts":  # another random stream: compare for the same counts
            avatars = Avatars(4, perturbation, 0.3, rng)(t)
            counts = DropoutCounts(t, _counts_of(avatars, "dropout"), 4, 0.7)
            want = slow(s, t, avatars=avatars)
            scale = fast._avatar_scale(functools.partial(dropout_batch_var, counts), s.dtype)
            got = fast.base.avatar_counts(s, counts, scale=scale)
        else:
            got, want = fast(s, t), slow(s, t)
        (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
        assert _rel(got, want) < 1e-10 and _rel(g_got, g_want) < 1e-10, (base.__name__, mode, perturbation)
    # the new mode is not relative: the floor changes sigma of the dead channel
    floor = Uncertainty("test_relative_floor").sigma(t, Avatars(4, p=0.3, generator=rng)(t))
    plain = Uncertainty("relative").sigma(t, Avatars(4, p=0.3, generator=rng)(t))
    assert floor[0] > 2 * plain[0]
    # and the config accepts both names
    cfg = AKDConfig(uncertainty="test_relative_floor", perturbation="test_spatial_dropout", p=0.5)
    assert cfg.uncertainty == "test_relative_floor"
    with pytest.raises(ValueError, match="must be < 1"):
        AKDConfig(perturbation="test_spatial_dropout", p=1.0)


@pytest.mark.parametrize("dim", [1, -1])
def test_kl_shared_exp_equals_per_avatar_softmax_and_falls_back_on_large_logits(dim, rng):
    """The one-exp form (CPU) against the per-avatar log-softmax form for the same masks, and the
    fallback for logits whose shift could underflow a whole avatar (float32: |max| > ~79)."""
    from avatarkd.losses.dropout import _kl_dropout_mean_shared_exp, kl_dropout_mean, kl_stream_mean, masked

    kept = torch.randn(3, 5, 7, 4, generator=rng, dtype=torch.float64) * 3 - 1
    masks = [torch.rand(3, 5, 7, 4, generator=rng) > 0.3 for _ in range(4)]
    pbar, neg = _kl_dropout_mean_shared_exp([kept.clone()], iter(masks), 4, dim)
    s = torch.randn(3, 5, 7, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    got = kl_dropout_mean(s, 0.5, kept.clone(), iter(masks), 4, dim)
    want = kl_stream_mean(s, 0.5, (masked(kept, m) for m in masks), 4, dim)
    assert _rel(got, want) < 1e-10
    (g_got,), (g_want,) = torch.autograd.grad(got.sum(), s), torch.autograd.grad(want.sum(), s)
    assert _rel(g_got, g_want) < 1e-10
    big = (kept * 40).float()  # |logits| up to several hundred: the shared shift could underflow
    assert _kl_dropout_mean_shared_exp([big], iter(masks), 4, dim) is None
    s32 = s.detach().float()
    got = kl_dropout_mean(s32, 0.5, big.clone(), iter(masks), 4, dim)
    want = kl_stream_mean(s32, 0.5, (masked(big, m) for m in masks), 4, dim)
    assert torch.equal(got, want) and torch.isfinite(got).all()


@pytest.mark.parametrize("length", [1, 2, 7])
def test_kl_shared_exp_on_short_rows_of_large_logits_stays_finite_and_close(length, rng):
    """Rows of one or two positions (a 1x1 FPN level) with logits far below 0: an avatar that keeps
    everything has its largest term far below the shared shift. Regression: e0 + (E - e0) lost E
    (NaN). The float32 value stays within |logit| * eps per row of the float64 per-avatar form."""
    from avatarkd.losses.dropout import _kl_dropout_mean_shared_exp, kl_dropout_mean, kl_stream_mean, masked

    kept = (torch.randn(4, 64, length, generator=rng, dtype=torch.float64) * 5).clamp(-29, 29)
    kept[:, :8] = -25.0  # far below the shared shift (0) wherever nothing is dropped
    masks = [torch.rand(4, 64, length, generator=rng) > 0.1 for _ in range(4)]
    assert _kl_dropout_mean_shared_exp([kept.float()], iter(masks), 4, -1) is not None  # the shared form runs
    s = torch.randn(4, 64, length, generator=rng, dtype=torch.float64)
    want = kl_stream_mean(s, 1.0, (masked(kept, m) for m in masks), 4, -1)
    got = kl_dropout_mean(s.float(), 1.0, kept.float(), iter(masks), 4, -1)
    assert torch.isfinite(got).all()
    assert (got.double() - want).abs().max() < 30 * 1e-6
