"""Avatars, the uncertainty factor and AvatarLoss."""

import copy

import pytest
import torch

from avatarkd import AvatarLoss, Avatars, ConfigError, Uncertainty
from avatarkd import losses as L
from avatarkd.losses import MGD, MasKD
from avatarkd.uncertainty import batch_standardise


# ------------------------------------------------------------------ Avatars
@pytest.mark.parametrize("kind", ["dropout", "channel_dropout", "gaussian", "multiplicative"])
def test_avatars_shape_and_unbiased(kind, rng):
    t = torch.randn(2, 3, 4, 5, generator=rng) + 1.0
    a = Avatars(num=4000, perturbation=kind, p=0.2, generator=rng)(t)
    assert a.shape == (4000, 2, 3, 4, 5)
    # standard error of the mean is below |t| * sqrt(p/(1-p)) / sqrt(4000) ~ 0.008 |t|
    assert torch.allclose(a.mean(0), t, atol=0.06 * t.abs().max().item())
    assert (a != a[0]).any()  # avatars differ from each other


def test_dropout_avatars_are_masked_and_rescaled(rng):
    t = torch.rand(3, 4, 6, 6, generator=rng) + 0.5
    a = Avatars(num=3, p=0.25, generator=rng)(t)
    ratio = a / t
    assert torch.all((ratio == 0) | torch.isclose(ratio, torch.tensor(1 / 0.75)))
    assert (ratio == 0).float().mean().item() == pytest.approx(0.25, abs=0.05)


def test_channel_dropout_drops_whole_channels(rng):
    t = torch.rand(2, 16, 5, 5, generator=rng) + 0.5
    a = Avatars(num=2, perturbation="channel_dropout", p=0.5, generator=rng)(t)
    zero = (a == 0).flatten(3).float().mean(-1)
    assert torch.all((zero == 0) | (zero == 1))


def test_avatars_are_reproducible_with_a_generator():
    t = torch.randn(2, 3, 4, 4)
    a1 = Avatars(3, p=0.1, generator=torch.Generator().manual_seed(7))(t)
    a2 = Avatars(3, p=0.1, generator=torch.Generator().manual_seed(7))(t)
    assert torch.equal(a1, a2)


def test_avatars_never_carry_gradient():
    t = torch.randn(2, 3, requires_grad=True)
    assert not Avatars(2)(t).requires_grad


@pytest.mark.parametrize(
    "kw,match",
    [
        ({"num": 0}, "num must be an integer"),
        ({"p": 1.0}, r"\[0, 1\)"),
        ({"perturbation": "blur"}, "unknown perturbation"),
    ],
)
def test_avatars_reject_bad_settings(kw, match):
    with pytest.raises(ValueError, match=match):
        Avatars(**kw)


# ------------------------------------------------------------------ uncertainty
def test_variance_sigma_tracks_dropout_theory(rng):
    t = torch.randn(8, 5, 6, 6, generator=rng, dtype=torch.float64) * torch.arange(1, 6).view(1, 5, 1, 1)
    p, k = 0.1, 1024
    a = Avatars(k, p=p, generator=rng)(t)
    sigma = Uncertainty("variance").sigma(t, a)
    # a - t = t * x with x = m / (1 - p) - 1, m ~ Bernoulli(1 - p): E[x^2] = p / (1 - p), so
    # sigma_c^2 = p / (1 - p) * mean(t_c^2) in expectation ...
    ex2 = p / (1 - p)
    theory = (ex2 * t.pow(2).mean(dim=(0, 2, 3))).sqrt()
    # ... and its estimate mean_{k,i}(t_i^2 x_ki^2) has standard error sqrt(var(x^2) sum_i t_i^4 / k) / n,
    # x^2 being (p / (1 - p))^2 with probability 1 - p and 1 with probability p
    var_x2 = (1 - p) * ex2**4 + p - ex2**2
    n = t[:, 0].numel()
    se_var = (var_x2 * t.pow(4).sum(dim=(0, 2, 3)) / k).sqrt() / n
    se_sigma = se_var / (2 * theory)  # d sqrt(v) = dv / (2 sqrt(v))
    # 6 standard errors: a false failure about once in 10^8 runs; a wrong factor (p instead of
    # p / (1 - p): sigma 5% low) is more than 8 standard errors away
    assert (se_sigma / theory).max() < 0.006
    assert torch.all((sigma - theory).abs() < 6 * se_sigma), ((sigma - theory) / se_sigma).tolist()


def test_variance_running_estimate_is_an_ema_and_survives_state_dict(rng):
    u = Uncertainty("variance", momentum=0.25)
    t1, t2 = torch.randn(4, 3, 5, 5, generator=rng), 3 * torch.randn(4, 3, 5, 5, generator=rng)
    a1, a2 = Avatars(2, generator=rng)(t1), Avatars(2, generator=rng)(t2)
    u.sigma(t1, a1)
    v1 = u.running_var.clone()
    assert torch.allclose(v1, (a1 - t1).pow(2).mean(dim=(0, 1, 3, 4)))
    u.sigma(t2, a2)
    v2 = (a2 - t2).pow(2).mean(dim=(0, 1, 3, 4))
    assert torch.allclose(u.running_var, 0.75 * v1 + 0.25 * v2)
    fresh = Uncertainty("variance")
    fresh.load_state_dict(u.state_dict())
    assert torch.equal(fresh.running_var, u.running_var) and fresh.num_batches_tracked.item() == 2
    fresh.eval()
    before = fresh.running_var.clone()
    fresh.sigma(t1, a1)
    assert torch.equal(fresh.running_var, before)  # eval mode does not update


def test_variance_floor_protects_dead_channels(rng):
    t = torch.randn(2, 3, 4, 4, generator=rng)
    t[:, 1] = 0
    a = Avatars(8, generator=rng)(t)  # 256 draws per channel: some element of each live channel is dropped
    u = Uncertainty("variance")
    sigma = u.sigma(t, a)
    var = (a - t).pow(2).mean(dim=(0, 1, 3, 4))
    assert var[1] == 0 and var[0] > 0 and var[2] > 0
    # the dead channel's variance is floored at rel_floor times the mean over channels; the others are their own
    floor = u.rel_floor * var.mean()
    torch.testing.assert_close(sigma, torch.stack([var[0], floor, var[2]]).clamp_min(floor).sqrt())


def test_relative_sigma_is_variance_sigma_at_unit_rms(rng):
    t = torch.randn(8, 5, 6, 6, generator=rng) * torch.arange(1, 6).view(1, 5, 1, 1)
    a = Avatars(16, p=0.1, generator=rng)(t)
    absolute = Uncertainty("variance").sigma(t, a)
    relative = Uncertainty("relative").sigma(t, a)
    assert relative.pow(2).mean().item() == pytest.approx(1.0, rel=1e-6)
    assert torch.allclose(relative, absolute / absolute.pow(2).mean().sqrt(), rtol=1e-6)
    # the base loss keeps its scale: a common factor of student and teacher is not divided out
    s = torch.randn_like(t)
    one = AvatarLoss(L.mse, uncertainty="relative")(s, t, avatars=a)
    ten = AvatarLoss(L.mse, uncertainty="relative")(10 * s, 10 * t, avatars=10 * a)
    assert ten.item() == pytest.approx(100 * one.item(), rel=1e-5)


def test_batchnorm_mode_matches_functional_batch_norm(rng):
    x = torch.randn(4, 3, 5, 5, generator=rng) * 2 + 1
    ref = torch.nn.functional.batch_norm(x, None, None, training=True, eps=1e-5)
    assert torch.allclose(batch_standardise(x), ref, atol=1e-5)
    stack = torch.stack([x, 3 * x + 2])
    out = batch_standardise(stack, channel_dim=2)
    assert torch.allclose(out[0], ref, atol=1e-5) and torch.allclose(out[1], ref, atol=1e-4)


def test_unknown_uncertainty_mode():
    with pytest.raises(ValueError, match="unknown uncertainty mode 'bn'"):
        Uncertainty("bn")


# ------------------------------------------------------------------ AvatarLoss
def _losses_for(shape):
    if len(shape) == 2:
        return [(L.kd, {"tau": 2.0}), (L.mse, {}), (L.l1, {}), (L.smooth_l1, {}), (L.pkd, {})]
    return [(L.mse, {}), (L.cwd, {"tau": 2.0}), (L.pkd, {}), (L.l1, {}), (L.smooth_l1, {"beta": 0.5})]


@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (8, 10)])
def test_degenerate_avatar_loss_equals_base_exactly(shape, rng):
    s, t = torch.randn(shape, generator=rng), torch.randn(shape, generator=rng)
    for fn, kw in _losses_for(shape):
        akd = AvatarLoss(fn, num_avatars=1, p=0.0, uncertainty="none", base_kwargs=kw)
        assert torch.equal(akd(s, t), fn(s, t, **kw)), fn.__name__


@pytest.mark.parametrize("uncertainty", ["none", "variance", "relative", "batchnorm"])
@pytest.mark.parametrize("shape", [(2, 6, 5, 4), (8, 10)])
def test_batched_k_equals_mean_of_single_avatar_evaluations(shape, uncertainty, rng):
    s = torch.randn(shape, generator=rng, requires_grad=True)
    t = torch.randn(shape, generator=rng)
    avatars = Avatars(5, p=0.2, generator=rng)(t)
    for fn, kw in _losses_for(shape):
        akd = AvatarLoss(fn, num_avatars=5, uncertainty=uncertainty, base_kwargs=kw)
        got = akd(s, t, avatars=avatars)
        (g_got,) = torch.autograd.grad(got, s)
        sn, an = copy.deepcopy(akd).uncertainty(s, t, avatars)  # same normalisation
        want = torch.stack([fn(sn, an[k], **kw) for k in range(5)]).mean()
        (g_want,) = torch.autograd.grad(want, s)
        assert got.item() == pytest.approx(want.item(), rel=1e-5, abs=1e-6), fn.__name__
        assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-6), fn.__name__


def test_batched_dkd_equals_mean_of_single_evaluations(rng):
    s, t = torch.randn(6, 5, generator=rng, requires_grad=True), torch.randn(6, 5, generator=rng)
    y = torch.randint(0, 5, (6,), generator=rng)
    a = Avatars(3, p=0.3, generator=rng)(t)
    got = AvatarLoss(L.dkd, num_avatars=3, uncertainty="none")(s, t, avatars=a, target=y)
    want = torch.stack([L.dkd(s, a[k], target=y) for k in range(3)]).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_batched_module_losses_equal_mean_of_single_evaluations(rng):
    s, t = torch.randn(2, 4, 6, 6, generator=rng), torch.randn(2, 4, 6, 6, generator=rng)
    a = Avatars(3, p=0.2, generator=rng)(t)
    maskd = MasKD(4, num_tokens=2)
    got = AvatarLoss(maskd, num_avatars=3, uncertainty="none")(s, t, avatars=a)
    want = torch.stack([maskd(s, a[k]) for k in range(3)]).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    mgd = MGD(4, alpha=1.0, generator=torch.Generator().manual_seed(3))
    got = AvatarLoss(mgd, num_avatars=3, uncertainty="none")(s, t, avatars=a)
    singles = []
    for k in range(3):
        mgd.rng.manual_seed(3)  # the batched form draws one mask; replay it
        singles.append(mgd(s, a[k]))
    assert got.item() == pytest.approx(torch.stack(singles).mean().item(), rel=1e-5)


def test_gradcheck_avatar_loss(rng):
    s = torch.randn(2, 3, 3, 3, generator=rng, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 3, generator=rng, dtype=torch.float64)
    a = Avatars(3, p=0.2, generator=rng)(t)
    for fn in (L.mse, L.cwd, L.pkd):
        for unc in ("variance", "batchnorm"):
            akd = AvatarLoss(fn, num_avatars=3, uncertainty=unc).double()
            akd(s, t, avatars=a)  # initialise the running estimate; gradcheck then reuses it
            akd.eval()
            assert torch.autograd.gradcheck(lambda x, akd=akd: akd(x, t, avatars=a), (s,)), (fn.__name__, unc)


@pytest.mark.parametrize("uncertainty", ["variance", "batchnorm"])
def test_scale_invariance_with_mse(uncertainty, rng):
    s, t = torch.randn(4, 6, 5, 5, generator=rng), torch.randn(4, 6, 5, 5, generator=rng)
    values = []
    # batchnorm's eps (1e-5) breaks invariance once the features' variance nears it
    for c in (1.0, 7.5, 0.01 if uncertainty == "variance" else 0.5):
        akd = AvatarLoss(L.mse, num_avatars=4, uncertainty=uncertainty, generator=torch.Generator().manual_seed(1))
        values.append(akd(c * s, c * t).item())
    assert values[1] == pytest.approx(values[0], rel=1e-4)
    assert values[2] == pytest.approx(values[0], rel=1e-4)


def test_no_uncertainty_is_not_scale_invariant(rng):
    s, t = torch.randn(4, 6, 5, 5, generator=rng), torch.randn(4, 6, 5, 5, generator=rng)
    one = AvatarLoss(L.mse, uncertainty="none", generator=torch.Generator().manual_seed(1))(s, t)
    ten = AvatarLoss(L.mse, uncertainty="none", generator=torch.Generator().manual_seed(1))(10 * s, 10 * t)
    assert ten.item() == pytest.approx(100 * one.item(), rel=1e-4)


def test_avatar_loss_checks_hyperparameters_at_construction():
    with pytest.raises(ConfigError, match="unknown hyperparameter 'temperature'; accepted: tau"):
        AvatarLoss(L.cwd, base_kwargs={"temperature": 2.0})


def test_avatar_loss_accepts_partial_and_module_bases():
    import functools

    akd = AvatarLoss(functools.partial(L.cwd, tau=3.0), p=0.0, uncertainty="none")
    s, t = torch.randn(2, 3, 4, 4), torch.randn(2, 3, 4, 4)
    assert torch.equal(akd(s, t), L.cwd(s, t, tau=3.0))
    mgd_akd = AvatarLoss(MGD(3))
    assert any(n.startswith("base.generation") for n, _ in mgd_akd.named_parameters())


def test_avatar_loss_rejects_misshaped_avatars():
    with pytest.raises(ValueError, match="avatars shape"):
        AvatarLoss(L.mse)(torch.zeros(2, 3), torch.zeros(2, 3), avatars=torch.zeros(2, 2, 4))


# ------------------------------------------------------------------ the generic paths for any base loss
def _cosine_gap(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A custom loss with no avatar_mean form and not batch-separable: AvatarLoss must vmap it."""
    return 1 - torch.nn.functional.cosine_similarity(s.flatten(1), t.flatten(1), dim=1).mean()


def _needs_python_floats(s: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """A loss vmap cannot batch (``.item()`` on a batched tensor): AvatarLoss must fall back to a loop."""
    scale = 1.0 + float(t.abs().max().item())
    return ((s - t) ** 2).mean() / scale


@pytest.mark.parametrize("fn", [_cosine_gap, _needs_python_floats], ids=["vmap", "loop"])
def test_custom_losses_without_a_fast_form_average_their_avatars(fn, rng, caplog):
    s = torch.randn(3, 4, 5, 5, generator=rng, requires_grad=True)
    t = torch.randn(3, 4, 5, 5, generator=rng)
    a = Avatars(4, p=0.2, generator=rng)(t)
    akd = AvatarLoss(fn, num_avatars=4, uncertainty="none")
    with caplog.at_level("DEBUG", logger="avatarkd.akd"):
        got = akd(s, t, avatars=a)
    looped = "looping over 4 avatars" in caplog.text
    assert looped == (fn is _needs_python_floats)  # each path really ran
    (g_got,) = torch.autograd.grad(got, s)
    want = torch.stack([fn(s, a[k]) for k in range(4)]).mean()
    (g_want,) = torch.autograd.grad(want, s)
    assert got.item() == pytest.approx(want.item(), rel=1e-6)
    assert torch.allclose(g_got, g_want, rtol=1e-5, atol=1e-8)


def test_dense_dkd_avatars_equal_mean_of_single_evaluations(rng):
    s, t = torch.randn(2, 5, 4, 4, generator=rng, requires_grad=True), torch.randn(2, 5, 4, 4, generator=rng)
    y = torch.randint(-1, 5, (2, 4, 4), generator=rng)  # -1: ignored pixels
    a = Avatars(3, p=0.3, generator=rng)(t)
    akd = AvatarLoss(L.dkd, num_avatars=3, uncertainty="none", base_kwargs={"tau": 2.0})
    assert akd.context_keys == ("target",)
    got = akd(s, t, avatars=a, target=y)
    want = torch.stack([L.dkd(s, a[k], target=y, tau=2.0) for k in range(3)]).mean()
    assert got.item() == pytest.approx(want.item(), rel=1e-5)


def test_public_uncertainty_accessors(rng):
    t = torch.rand(2, 3, 4, 4, generator=rng) + 0.5
    akd = AvatarLoss(L.mse, num_avatars=2, p=0.2, generator=torch.Generator().manual_seed(0))
    assert akd.uncertainty_state()["sigma"] is None  # nothing estimated before the first batch
    akd(torch.zeros_like(t), t)
    state = akd.uncertainty_state()
    assert state["mode"] == "relative" and state["num_avatars"] == 2 and state["p"] == 0.2
    assert torch.equal(state["sigma"], akd.uncertainty.running_var.sqrt())
    before = akd.avatars.generator.get_state()
    m = akd.uncertainty_map(t)
    assert m.shape == (2, 4, 4) and bool((m > 0).any())
    assert torch.equal(akd.avatars.generator.get_state(), before), "a picture must not consume training randomness"
    assert AvatarLoss(L.mse, p=0.0).uncertainty_map(t) is None
    assert AvatarLoss(L.mse, uncertainty="batchnorm").uncertainty_state()["sigma"] is None


def test_uncertainty_map_is_the_mean_squared_avatar_deviation_per_position(rng):
    # dropout at p = 0.5 keeps 2t or drops to 0: (a_k - t)^2 = t^2 for every avatar, whatever is drawn,
    # so E_k (a_k - t)^2 averaged over channels is mean_c t^2 exactly
    t = torch.randn(2, 3, 4, 5, generator=rng)
    m = AvatarLoss(L.mse, num_avatars=6, p=0.5).uncertainty_map(t)
    torch.testing.assert_close(m, t.pow(2).mean(1))
    # channel dropout at p = 0.5 (whole channels kept twice or dropped) gives the same
    m = AvatarLoss(L.mse, num_avatars=3, perturbation="channel_dropout", p=0.5).uncertainty_map(t)
    torch.testing.assert_close(m, t.pow(2).mean(1))
    assert AvatarLoss(L.mse, num_avatars=3, p=0.0).uncertainty_map(t) is None
    assert AvatarLoss(L.mse, num_avatars=3, p=0.5).uncertainty_map(t[0, :, 0]) is None  # not spatial
