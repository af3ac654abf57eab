"""Every base loss against an independent float64 NumPy reference, golden values and gradcheck."""

import math

import pytest
import reference as R
import torch

from avatarkd import losses as L
from avatarkd.errors import AvatarKDDeprecationWarning
from avatarkd.losses import MGD, MasKD
from avatarkd.registry import register_loss

FEATURE_LOSSES = [
    ("mse", L.mse, R.mse, {}),
    ("cwd", L.cwd, R.cwd, {"tau": 1.0}),
    ("cwd_t4", L.cwd, R.cwd, {"tau": 4.0}),
    ("pkd", L.pkd, R.pkd, {}),
    ("l1", L.l1, R.l1, {}),
    ("smooth_l1", L.smooth_l1, R.smooth_l1, {"beta": 0.5}),
]


def rel_err(a: float, b: float) -> float:
    return abs(a - b) / max(abs(b), 1e-12)


@pytest.mark.parametrize("name,fn,ref,kw", FEATURE_LOSSES, ids=[x[0] for x in FEATURE_LOSSES])
def test_feature_loss_matches_float64_reference(name, fn, ref, kw, rng):
    for shape in [(2, 8, 5, 7), (3, 4, 9, 6)]:
        s = torch.randn(shape, generator=rng)
        t = torch.randn(shape, generator=rng) * 1.5 + 0.3
        got = fn(s, t, **kw).item()
        want = ref(s.double().numpy(), t.double().numpy(), **kw)
        assert rel_err(got, want) < 1e-5, (name, got, want)


@pytest.mark.parametrize("T", [1.0, 4.0])
def test_kd_matches_reference(T, rng):
    s, t = torch.randn(16, 10, generator=rng) * 3, torch.randn(16, 10, generator=rng) * 3
    assert rel_err(L.kd(s, t, tau=T).item(), R.kd(s.double().numpy(), t.double().numpy(), T=T)) < 1e-5


def test_dkd_matches_reference(rng):
    s, t = torch.randn(12, 7, generator=rng) * 2, torch.randn(12, 7, generator=rng) * 2
    y = torch.randint(0, 7, (12,), generator=rng)
    got = L.dkd(s, t, target=y, alpha=0.5, beta=4.0, tau=2.0).item()
    want = R.dkd(s.double().numpy(), t.double().numpy(), y.numpy(), alpha=0.5, beta=4.0, T=2.0)
    assert rel_err(got, want) < 1e-5


def test_pkd_resizes_student_bilinearly(rng):
    s, t = torch.randn(2, 3, 4, 5, generator=rng), torch.randn(2, 3, 8, 10, generator=rng)
    up = torch.nn.functional.interpolate(s, size=(8, 10), mode="bilinear", align_corners=False)
    assert L.pkd(s, t).item() == pytest.approx(R.pkd(up.double().numpy(), t.double().numpy()), rel=1e-5)


def test_maskd_matches_reference(rng):
    s, t = torch.randn(2, 6, 4, 5, generator=rng), torch.randn(2, 6, 4, 5, generator=rng)
    m = MasKD(6, num_tokens=3)
    with torch.no_grad():
        m.tokens.normal_(generator=rng)
        m.weight_logits.normal_(generator=rng)
    want = R.maskd(
        s.double().numpy(),
        t.double().numpy(),
        m.tokens.detach().double().numpy(),
        m.weight_logits.detach().double().numpy(),
    )
    assert rel_err(m(s, t).item(), want) < 1e-5


def test_mgd_is_alpha_times_generated_mse(rng):
    m = MGD(4, alpha=0.5, lambda_mgd=0.0)  # nothing masked: deterministic
    s, t = torch.randn(2, 4, 5, 5, generator=rng), torch.randn(2, 4, 5, 5, generator=rng)
    g = m.generation(s).detach().double().numpy()
    assert rel_err(m(s, t).item(), 0.5 * R.mse(g, t.double().numpy())) < 1e-5


def test_mgd_masks_about_lambda_of_positions():
    m = MGD(1, lambda_mgd=0.65, generator=torch.Generator().manual_seed(0))
    m.generation = torch.nn.Identity()
    kept = (m.generate(torch.ones(4, 1, 50, 50)) != 0).float().mean().item()
    assert kept == pytest.approx(0.35, abs=0.02)


# ------------------------------------------------------------------ golden values
# Derived by hand on inputs small enough to do on paper, so they check the formulas (reduction,
# temperature scaling, std convention), not merely agreement with tests/reference.py.
LN43 = math.log(4 / 3)


def _row(*values: float) -> torch.Tensor:
    """One sample, one channel, one row of positions: shape (1, 1, 1, W)."""
    return torch.tensor(values, dtype=torch.float64).view(1, 1, 1, -1)


def test_golden_mse_sums_over_features_and_divides_by_batch():
    s = torch.tensor([1.0, 2.0, 0.0, 0.0], dtype=torch.float64).view(2, 1, 1, 2)  # sample 0: (1, 2); sample 1: 0
    assert L.mse(s, torch.zeros_like(s)).item() == pytest.approx((1 + 4) / 2, rel=1e-12)


@pytest.mark.parametrize("tau", [1.0, 2.0])
def test_golden_cwd(tau):
    # teacher positions equal -> p_t = (1/2, 1/2); student logits (tau ln 3, 0) -> q = (3/4, 1/4) at any tau:
    # KL = 1/2 ln(2/3) + 1/2 ln 2 = 1/2 ln(4/3), times tau^2, over N*C = 1
    got = L.cwd(_row(tau * math.log(3), 0.0), _row(0.0, 0.0), tau=tau).item()
    assert got == pytest.approx(0.5 * LN43 * tau**2, rel=1e-12)


def test_golden_kd():
    # the same two-class case over dim 1, batch of one: 1/2 ln(4/3) * tau^2 at tau = 2
    s = torch.tensor([[2 * math.log(3), 0.0]], dtype=torch.float64)
    assert L.kd(s, torch.zeros_like(s), tau=2.0).item() == pytest.approx(4 * 0.5 * LN43, rel=1e-12)


def test_golden_pkd_uses_the_unbiased_std():
    # t = (1, 2, 3): mean 2, unbiased std 1 -> (-1, 0, 1)/(1 + eps); s = (3, 2, 1) -> (1, 0, -1)/(1 + eps)
    # mean squared difference (4 + 0 + 4)/3 / (1 + eps)^2, halved (a population std would give 1.0)
    got = L.pkd(_row(3.0, 2.0, 1.0), _row(1.0, 2.0, 3.0)).item()
    assert got == pytest.approx(4 / 3 / (1 + 1e-6) ** 2, rel=1e-12)


def test_golden_l1_and_smooth_l1():
    s = _row(1.0, -2.0, 3.0, 0.0)
    assert L.l1(s, torch.zeros_like(s)).item() == pytest.approx(6 / 4, rel=1e-12)
    d = _row(0.5, 2.0)  # Huber at beta 1: 0.5 * 0.25 and 2 - 0.5
    assert L.smooth_l1(d, torch.zeros_like(d), beta=1.0).item() == pytest.approx((0.125 + 1.5) / 2, rel=1e-12)


def test_golden_dkd():
    # target class 0; teacher logits equal -> p_t = (1/3, 1/3, 1/3): binary (1/3, 2/3), others (1/2, 1/2)
    # student (0, ln 2, 0) -> p_s = (1/4, 1/2, 1/4): binary (1/4, 3/4), others softmax(ln 2, 0) = (2/3, 1/3)
    tckd = 1 / 3 * math.log((1 / 3) / (1 / 4)) + 2 / 3 * math.log((2 / 3) / (3 / 4))
    nckd = 0.5 * math.log(0.5 / (2 / 3)) + 0.5 * math.log(0.5 / (1 / 3))
    s = torch.tensor([[0.0, math.log(2), 0.0]], dtype=torch.float64)
    got = L.dkd(s, torch.zeros_like(s), target=torch.tensor([0]), alpha=1.0, beta=8.0, tau=1.0).item()
    assert got == pytest.approx(tckd + 8 * nckd, rel=1e-12)


def test_identical_inputs_give_zero():
    x = torch.randn(2, 3, 4, 4)
    for fn in (L.mse, L.cwd, L.pkd, L.l1, L.smooth_l1):
        assert fn(x, x).item() == pytest.approx(0.0, abs=1e-6)
    logits = torch.randn(5, 6)
    assert L.kd(logits, logits).item() == pytest.approx(0.0, abs=1e-6)
    assert L.dkd(logits, logits, target=torch.zeros(5, dtype=torch.long)).item() == pytest.approx(0.0, abs=1e-5)


# ------------------------------------------------------------------ gradients
@pytest.mark.parametrize(
    "fn,kw",
    [(L.mse, {}), (L.cwd, {"tau": 2.0}), (L.pkd, {}), (L.l1, {}), (L.smooth_l1, {"beta": 0.5})],
)
def test_gradcheck_feature_losses(fn, kw, rng):
    s = torch.randn(2, 3, 3, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 3, 4, generator=rng, dtype=torch.float64)
    assert torch.autograd.gradcheck(lambda x: fn(x, t, **kw), (s,))


def test_gradcheck_logit_losses(rng):
    s = torch.randn(4, 5, generator=rng, dtype=torch.float64, requires_grad=True)
    t = torch.randn(4, 5, generator=rng, dtype=torch.float64)
    y = torch.randint(0, 5, (4,), generator=rng)
    assert torch.autograd.gradcheck(lambda x: L.kd(x, t, tau=2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: L.dkd(x, t, target=y, tau=2.0), (s,))


def test_gradcheck_module_losses(rng):
    s = torch.randn(2, 3, 4, 4, generator=rng, dtype=torch.float64, requires_grad=True)
    t = torch.randn(2, 3, 4, 4, generator=rng, dtype=torch.float64)
    maskd = MasKD(3, num_tokens=2).double()
    assert torch.autograd.gradcheck(lambda x: maskd(x, t), (s,))
    mgd = MGD(3, alpha=1.0, lambda_mgd=0.0).double()
    assert torch.autograd.gradcheck(lambda x: mgd(x, t), (s,))


def test_shape_mismatch_is_a_clear_error():
    with pytest.raises(ValueError, match=r"mse: student shape \(2, 3\) != teacher shape \(2, 4\)"):
        L.mse(torch.zeros(2, 3), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="dkd needs the ground-truth labels"):
        L.dkd(torch.zeros(2, 3), torch.zeros(2, 3))


# ------------------------------------------------------------------ one temperature name
def test_an_old_hyperparameter_name_still_works_in_direct_calls_with_a_warning():
    @register_loss("renamed_kd_for_tests", renamed={"temperature": "tau"}, replace=True)
    def renamed_kd(student: torch.Tensor, teacher: torch.Tensor, tau: float = 1.0) -> torch.Tensor:
        """KD under a test name, its temperature once called 'temperature'."""
        return L.kd(student, teacher, tau=tau)

    s, t = torch.randn(4, 5), torch.randn(4, 5)
    with pytest.warns(AvatarKDDeprecationWarning, match="'temperature' is deprecated, use 'tau'"):
        assert renamed_kd(s, t, temperature=2.0).item() == L.kd(s, t, tau=2.0).item()
    with pytest.raises(TypeError, match="'T'"):
        L.kd(s, t, T=2.0)  # the built-in losses keep no old names


def test_every_registered_temperature_is_called_tau():
    for name in L.LOSSES.names():
        params = L.LOSSES.get(name).hyperparameters()
        assert "T" not in params and "temperature" not in params, name


# ------------------------------------------------------------------ per-pixel DKD
def test_dense_dkd_equals_dkd_over_labelled_pixels(rng):
    s, t = torch.randn(2, 4, 3, 5, generator=rng), torch.randn(2, 4, 3, 5, generator=rng)
    y = torch.randint(0, 4, (2, 3, 5), generator=rng)
    y[0, 0, :2] = -1  # ignored pixels
    keep = y.reshape(-1) >= 0
    flat = lambda x: x.movedim(1, -1).reshape(-1, 4)[keep]  # noqa: E731
    want = R.dkd(flat(s).double().numpy(), flat(t).double().numpy(), y.reshape(-1)[keep].numpy(), T=2.0)
    assert rel_err(L.dkd(s, t, target=y, tau=2.0).item(), want) < 1e-5
    # a label mask at another resolution is resized (nearest) to the logits
    big = y.repeat_interleave(2, 1).repeat_interleave(2, 2)
    assert L.dkd(s, t, target=big, tau=2.0).item() == pytest.approx(L.dkd(s, t, target=y, tau=2.0).item(), rel=1e-6)
    with pytest.raises(ValueError, match="label 7 is not a class of the 4-channel logits"):
        L.dkd(s, t, target=torch.full((2, 3, 5), 7))


TWIN_FORMS = ("avatar_mean", "avatar_counts", "avatar_masks", "avatar_standardised_masks", "avatar_stream")


def test_twins_take_their_defaults_from_the_base_loss():
    """One source of defaults: a twin's hyperparameters have no default of its own; the base's fill them."""
    import inspect

    from avatarkd.registry import LOSSES

    seen = 0
    for name in LOSSES.names():
        fn = LOSSES.get(name).fn
        if isinstance(fn, type):
            continue  # modules keep hyperparameters on the instance
        base_defaults = {
            n: p.default
            for n, p in inspect.signature(fn).parameters.items()
            if p.default is not inspect.Parameter.empty
        }
        for form in TWIN_FORMS:
            twin = getattr(fn, form, None)
            if twin is None:
                continue
            seen += 1
            assert twin.defaults == base_defaults, (name, form)
            own = inspect.signature(twin.__wrapped__).parameters
            for hp in base_defaults:
                assert own[hp].kind is inspect.Parameter.KEYWORD_ONLY and own[hp].default is inspect.Parameter.empty
    assert seen >= 12
