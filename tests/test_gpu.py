"""The CUDA paths: run with ``pytest -m gpu`` on a machine with a GPU (skipped elsewhere)."""

from __future__ import annotations

import pytest
import torch
from test_cli import MODELS, POINTS, base_config
from tiny_data import write_tiny_dataset

from avatarkd import AvatarLoss, Avatars
from avatarkd import losses as L
from avatarkd.config import TrainConfig
from avatarkd.runner import build_trainer

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize("fn,kw", [(L.mse, {}), (L.cwd, {"tau": 2.0}), (L.pkd, {})])
def test_avatar_loss_on_cuda_matches_cpu(fn, kw):
    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 8, 6, 6, generator=g), torch.randn(2, 8, 6, 6, generator=g)
    a = Avatars(4, p=0.1, generator=g)(t)
    cpu = AvatarLoss(fn, num_avatars=4, base_kwargs=kw)(s, t, avatars=a)
    gpu = AvatarLoss(fn, num_avatars=4, base_kwargs=kw).cuda()(s.cuda(), t.cuda(), avatars=a.cuda())
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-4)
    drawn = Avatars(2, generator=torch.Generator(device="cuda").manual_seed(1))(t.cuda())
    assert drawn.device.type == "cuda" and drawn.shape == (2, *t.shape)


@pytest.mark.parametrize("amp", ["fp16", "bf16"])
def test_distilled_training_step_on_cuda(amp, tmp_path):
    data = write_tiny_dataset(tmp_path / "data", n_train=8, n_val=4)
    teacher, student = MODELS["segmentation"]
    tcfg = TrainConfig.model_validate(base_config("segmentation", data, tmp_path / "t", teacher))
    weights = tmp_path / "teacher.pt"
    torch.save(build_trainer(tcfg).model.state_dict(), weights)
    cfg = base_config("segmentation", data, tmp_path / "run", student, steps=2)
    cfg["train"].update(amp=amp, device="cuda", plots=False)
    cfg["teacher"] = {**teacher, "weights": str(weights)}
    cfg["distill"] = {"akd": {"num_avatars": 4}, "points": POINTS["segmentation"]}
    trainer = build_trainer(TrainConfig.model_validate(cfg))
    assert trainer.ctx.device.type == "cuda"
    result = trainer.fit()
    assert result["step"] == 2 and 0.0 <= result["metrics"]["miou"] <= 1.0


@pytest.mark.parametrize("fn,kw", [(L.cwd, {"tau": 2.0}), (L.kd, {"tau": 2.0})])
def test_kl_fast_path_on_cuda_equals_the_explicit_path_for_the_same_seed(fn, kw):
    g = torch.Generator().manual_seed(0)
    s = torch.randn(2, 8, 12, 12, generator=g).cuda().requires_grad_()
    t = torch.randn(2, 8, 12, 12, generator=g).relu().cuda()
    fast = AvatarLoss(fn, num_avatars=4, base_kwargs=kw, generator=torch.Generator(device="cuda").manual_seed(1))
    slow = AvatarLoss(fn, num_avatars=4, base_kwargs=kw, generator=torch.Generator(device="cuda").manual_seed(1))
    slow.fast_paths = False
    got, want = fast(s, t), slow(s, t)
    (g_got,), (g_want,) = torch.autograd.grad(got, s), torch.autograd.grad(want, s)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    assert torch.allclose(g_got, g_want, rtol=1e-4, atol=1e-7)


def test_count_path_on_cuda_matches_cpu_for_the_same_counts():
    from avatarkd.losses.dropout import DropoutCounts

    g = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 8, 12, 12, generator=g), torch.randn(2, 8, 12, 12, generator=g).relu()
    counts = Avatars(4, p=0.1, generator=torch.Generator(device="cuda").manual_seed(2)).keep_counts(t.cuda())
    assert counts.device.type == "cuda" and int(counts.max()) <= 4
    scale = torch.rand(8, generator=g) + 0.5
    cpu = L.mse.avatar_counts(s, DropoutCounts(t, counts.cpu(), 4, 0.9), scale=scale)
    gpu = L.mse.avatar_counts(s.cuda(), DropoutCounts(t.cuda(), counts, 4, 0.9), scale=scale.cuda())
    assert gpu.item() == pytest.approx(cpu.item(), rel=1e-5)
