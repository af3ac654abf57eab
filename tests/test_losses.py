"""Every base loss against an independent float64 NumPy reference, golden values and gradcheck."""

import numpy as np
import pytest
import torch

import reference as R
from avatarkd import losses as L
from avatarkd.losses import MGD, MasKD

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
    assert rel_err(L.kd(s, t, T=T).item(), R.kd(s.double().numpy(), t.double().numpy(), T=T)) < 1e-5


def test_dkd_matches_reference(rng):
    s, t = torch.randn(12, 7, generator=rng) * 2, torch.randn(12, 7, generator=rng) * 2
    y = torch.randint(0, 7, (12,), generator=rng)
    got = L.dkd(s, t, target=y, alpha=0.5, beta=4.0, T=2.0).item()
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
    want = R.maskd(s.double().numpy(), t.double().numpy(), m.tokens.detach().double().numpy(), m.weight_logits.detach().double().numpy())
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
def _golden_features() -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(36, dtype=torch.float64)
    return torch.sin(i).view(2, 3, 2, 3), torch.cos(i * 0.7).view(2, 3, 2, 3)


def _golden_logits() -> tuple[torch.Tensor, torch.Tensor]:
    i = torch.arange(12, dtype=torch.float64)
    return (torch.sin(i * 1.3) * 3).view(3, 4), (torch.cos(i * 0.4) * 3).view(3, 4)


@pytest.mark.parametrize(
    "fn,kw,expected",
    [
        (L.mse, {}, 15.05136674545998),
        (L.cwd, {"tau": 2.0}, 0.3983151034267232),
        (L.pkd, {}, 0.8108462199999376),
        (L.l1, {}, 0.7316604681835157),
        (L.smooth_l1, {"beta": 0.5}, 0.5256479014597715),
    ],
)
def test_golden_feature_values(fn, kw, expected):
    s, t = _golden_features()
    assert fn(s, t, **kw).item() == pytest.approx(expected, rel=1e-10)
    assert fn(s.float(), t.float(), **kw).item() == pytest.approx(expected, rel=1e-5)


def test_golden_logit_values():
    s, t = _golden_logits()
    assert L.kd(s, t, T=2.0).item() == pytest.approx(2.0044809662458145, rel=1e-10)
    y = torch.tensor([0, 3, 1])
    assert L.dkd(s, t, target=y, T=2.0).item() == pytest.approx(15.514096538120901, rel=1e-10)


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
    assert torch.autograd.gradcheck(lambda x: L.kd(x, t, T=2.0), (s,))
    assert torch.autograd.gradcheck(lambda x: L.dkd(x, t, target=y, T=2.0), (s,))


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
