"""avatarkd.integrations.mmrazor: AvatarLoss in MMRazor's registry, equal to MMRazor's CWD when it adds
nothing, and two training steps of SingleTeacherDistill from the example config on the bundled data."""

from __future__ import annotations

import sys
import types
from pathlib import Path

import pytest
import torch

pytest.importorskip("mmengine", reason="the 'mmrazor' extra (mmengine) is not installed")
pytest.importorskip("mmrazor", reason="the 'mmrazor' extra (mmrazor==1.0.0) is not installed")

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


class _Stub(types.ModuleType):
    """Any name is an empty class: what mmrazor.structures.quantization's users import from it."""

    def __getattr__(self, name: str) -> type:
        if name.startswith("__"):
            raise AttributeError(name)
        return type(name, (), {})


@pytest.fixture(scope="module")
def mm():
    """``mmrazor.models`` imported, with its unused quantization subpackage stubbed: on torch 2.x that
    subpackage fails at import (MMRazor issues #615/#632). The plugin itself never patches MMRazor."""
    if "mmrazor.models" not in sys.modules:
        stub = _Stub("mmrazor.structures.quantization")
        stub.__path__, stub.__all__ = [], []
        sys.modules.setdefault("mmrazor.structures.quantization", stub)
    try:
        import mmrazor.models  # noqa: F401
    except ImportError as err:  # e.g. a dependency MMRazor does not declare
        pytest.skip(f"mmrazor.models cannot be imported here: {err}")
    from mmrazor.registry import MODELS

    import avatarkd.integrations.mmrazor as plugin

    return MODELS, plugin


def test_mmrazor_avatar_loss_equals_mmrazor_cwd_when_it_adds_nothing(mm):
    MODELS, plugin = mm
    from mmrazor.models.losses import ChannelWiseDivergence

    gen = torch.Generator().manual_seed(0)
    s, t = torch.randn(2, 4, 5, 6, generator=gen), torch.randn(2, 4, 5, 6, generator=gen)
    loss = MODELS.build(
        dict(type="AvatarLoss", base=dict(type="ChannelWiseDivergence", tau=1), num_avatars=1, p=0, uncertainty="none")
    )
    assert isinstance(loss, plugin.AvatarLoss)
    expected = ChannelWiseDivergence(tau=1)(s, t)
    assert torch.allclose(loss(preds_S=s, preds_T=t), expected, rtol=1e-6, atol=0)
    assert torch.allclose(loss(s, t), expected, rtol=1e-6, atol=0)

    # avatars (K=4, p=0.1) change the value and keep a gradient; an avatarkd loss by name works too
    akd = MODELS.build(dict(type="AvatarLoss", base=dict(type="ChannelWiseDivergence", tau=1), num_avatars=4))
    s.requires_grad_(True)
    value = akd(preds_S=s, preds_T=t)
    value.backward()
    assert torch.isfinite(value) and s.grad is not None and not torch.allclose(value, expected)
    by_name = MODELS.build(dict(type="AvatarLoss", base="cwd", tau=1.0, num_avatars=1, p=0, uncertainty="none"))
    assert torch.allclose(by_name(preds_S=s, preds_T=t), expected, rtol=1e-5)
    with pytest.raises(Exception, match="not an avatarkd loss; did you mean 'cwd'"):
        MODELS.build(dict(type="AvatarLoss", base="cdw"))


def test_mmrazor_single_teacher_distill_trains_two_steps_from_the_example_config(mm):
    MODELS, plugin = mm
    from mmengine.config import Config
    from mmengine.optim import build_optim_wrapper

    from avatarkd.data import open_dataset

    sys.path.insert(0, str(EXAMPLES))
    try:
        cfg = Config.fromfile(str(EXAMPLES / "mmrazor_akd_config.py"))  # runs custom_imports
        torch.manual_seed(0)
        model = MODELS.build(cfg.model)
    finally:
        sys.path.remove(str(EXAMPLES))
    assert type(model).__name__ == "SingleTeacherDistill"
    assert all(isinstance(m, plugin.AvatarLoss) for m in model.distiller.distill_losses.values())
    optim = build_optim_wrapper(model, cfg.optim_wrapper)

    data = open_dataset("segmentation", split="train", seed=0)
    teacher_before = {k: v.clone() for k, v in model.teacher.state_dict().items()}
    student_before = {k: v.clone() for k, v in model.student.state_dict().items()}
    model.train()
    for step in range(2):
        images, masks = zip(*(data[i] for i in range(4 * step, 4 * step + 4)), strict=True)
        log = model.train_step({"inputs": torch.stack(images), "data_samples": torch.stack(masks).long()}, optim)
        assert {"distill.loss_cwd", "distill.loss_kd", "student.loss_ce"} <= set(log)
        assert all(torch.isfinite(torch.as_tensor(v)).all() for v in log.values())
    assert all(not m.training for m in model.teacher.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert all(torch.equal(v, model.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert any(not torch.equal(v, model.student.state_dict()[k]) for k, v in student_before.items())
