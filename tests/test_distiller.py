"""The model-agnostic Distiller on small torchvision models."""

import pytest
import torch
from torch import nn
from torchvision.models import mobilenet_v3_small, resnet18

from avatarkd import AvatarLoss, DistillationError, Distiller, DistillPoint
from avatarkd import losses as L
from avatarkd.losses import MGD


def _pair(num_classes: int = 5) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    return mobilenet_v3_small(num_classes=num_classes), resnet18(num_classes=num_classes)


def _points(k: int = 2) -> list[DistillPoint]:
    g = torch.Generator().manual_seed(0)
    return [
        DistillPoint("feat", "features", "layer4", loss=AvatarLoss(L.mse, num_avatars=k, generator=g), weight=1.0),
        DistillPoint(
            "logits", "classifier", "fc", loss=AvatarLoss(L.kd, num_avatars=k, generator=g, base_kwargs={"tau": 2.0})
        ),
    ]


def test_distiller_trains_and_distillation_loss_decreases():
    student, teacher = _pair()
    x = torch.randn(4, 3, 64, 64)
    distiller = Distiller(student, teacher, _points()).build(x)
    # mobilenet features: 576 channels vs resnet layer4: 512 -> a 1x1 conv connector
    assert isinstance(distiller.connectors["feat"].proj[0], nn.Conv2d)
    assert distiller.connectors["feat"].proj[0].in_channels == 576
    opt = torch.optim.Adam(distiller.trainable_parameters(), lr=1e-3)
    distiller.train()
    assert not distiller.teacher.training
    history = []
    for _ in range(8):
        _, losses = distiller(x)
        assert set(losses) == {"distill.feat", "distill.logits", "distill_total"}
        opt.zero_grad()
        losses["distill_total"].backward()
        opt.step()
        history.append(losses["distill_total"].item())
    assert history[-1] < 0.7 * history[0], history
    assert all(p.grad is None for p in distiller.teacher.parameters())


def test_teacher_parameters_are_not_trainable_nor_saved():
    student, teacher = _pair()
    distiller = Distiller(student, teacher, _points()).build(torch.randn(2, 3, 32, 32))
    params = {id(p) for p in distiller.trainable_parameters()}
    assert not any(id(p) in params for p in teacher.parameters())
    assert any(id(p) in params for p in distiller.connectors.parameters())
    assert not any(k.startswith("teacher.") for k in distiller.distill_state_dict())


def test_fpn_dict_outputs_become_levels_with_their_own_state():
    from torchvision.ops import FeaturePyramidNetwork

    class Net(nn.Module):
        def __init__(self, ch: int) -> None:
            super().__init__()
            self.c1 = nn.Conv2d(3, ch, 3, stride=2, padding=1)
            self.c2 = nn.Conv2d(ch, ch, 3, stride=2, padding=1)
            self.fpn = FeaturePyramidNetwork([ch, ch], ch)

        def forward(self, x):
            a = self.c1(x)
            return self.fpn({"p2": a, "p3": self.c2(a)})

    student, teacher = Net(8), Net(16)
    point = DistillPoint("fpn", "fpn", "fpn", loss_factory=lambda c: AvatarLoss(MGD(c), num_avatars=2))
    d = Distiller(student, teacher, [point]).build(torch.randn(2, 3, 16, 16))
    _, losses = d(torch.randn(2, 3, 16, 16))
    assert set(losses) == {"distill.fpn.p2", "distill.fpn.p3", "distill_total"}
    assert d.loss_modules["fpn_p2"].base.generation[0].in_channels == 16
    assert d.loss_modules["fpn_p2"] is not d.loss_modules["fpn_p3"]
    total = losses["distill.fpn.p2"] + losses["distill.fpn.p3"]
    assert torch.allclose(losses["distill_total"], total)


def test_spatial_mismatch_is_resized():
    student = nn.Sequential(nn.Conv2d(3, 4, 3, stride=4, padding=1))
    teacher = nn.Sequential(nn.Conv2d(3, 6, 3, stride=2, padding=1))
    d = Distiller(student, teacher, [DistillPoint("f", "0", "0", loss=L.mse)]).build(torch.randn(1, 3, 16, 16))
    assert d.connectors["f"].resize_to == (8, 8)
    x = torch.randn(1, 3, 16, 16)
    _, losses = d(x)
    # by hand: the student's 4x4 map, channels mapped by the connector's 1x1 conv, bilinearly up to 8x8
    with torch.no_grad():
        s = torch.nn.functional.conv2d(student(x), d.connectors["f"].proj[0].weight, d.connectors["f"].proj[0].bias)
        assert s.shape == (1, 6, 4, 4)
        s = torch.nn.functional.interpolate(s, size=(8, 8), mode="bilinear", align_corners=False)
        expected = L.mse(s, teacher(x))
    torch.testing.assert_close(losses["distill_total"].detach(), expected)


def test_weights_multiply_point_losses():
    student, teacher = _pair()
    x = torch.randn(2, 3, 32, 32)
    pts = [DistillPoint("logits", "classifier", "fc", loss=L.kd, weight=3.0)]
    d = Distiller(student, teacher, pts).build(x).eval()  # eval: no dropout in the student
    _, losses = d(x)
    with torch.no_grad():
        expected = 3.0 * L.kd(student(x), teacher(x))
    assert losses["distill.logits"].item() == pytest.approx(expected.item(), rel=1e-5)


# ------------------------------------------------------------------ clear errors
def test_misspelt_module_names_the_point_and_suggests():
    student, teacher = _pair()
    with pytest.raises(DistillationError, match=r"teacher has no module named 'layer5'; did you mean 'layer4'"):
        Distiller(student, teacher, [DistillPoint("f", "features", "layer5", loss=L.mse)])


def test_unalignable_shapes_are_reported():
    student, teacher = _pair()
    with pytest.raises(DistillationError, match=r"point 'f': cannot align student feature"):
        Distiller(student, teacher, [DistillPoint("f", "classifier", "layer4", loss=L.mse)]).build(
            torch.randn(2, 3, 32, 32)
        )


def test_teacher_in_train_mode_is_refused():
    student, teacher = _pair()
    d = Distiller(student, teacher, _points()).build(torch.randn(2, 3, 32, 32))
    teacher.train()
    with pytest.raises(DistillationError, match="teacher is in train mode"):
        d(torch.randn(2, 3, 32, 32))


def test_non_finite_feature_names_the_point():
    student, teacher = _pair()
    d = Distiller(student, teacher, _points()).build(torch.randn(2, 3, 32, 32))
    with torch.no_grad():
        student.classifier[-1].bias.fill_(float("nan"))
    with pytest.raises(DistillationError, match=r"point 'logits': student feature contains NaN or Inf"):
        d(torch.randn(2, 3, 32, 32))


def test_forward_before_build_is_refused():
    student, teacher = _pair()
    with pytest.raises(DistillationError, match="call distiller.build"):
        Distiller(student, teacher, _points())(torch.randn(2, 3, 32, 32))


def test_point_validation():
    with pytest.raises(DistillationError, match="exactly one of loss= or loss_factory="):
        DistillPoint("f", "a", "b")
    with pytest.raises(DistillationError, match="weight must be a finite number"):
        DistillPoint("f", "a", "b", loss=L.mse, weight=float("nan"))
    student, teacher = _pair()
    with pytest.raises(DistillationError, match="unique"):
        Distiller(student, teacher, [DistillPoint("f", "features", "layer4", loss=L.mse)] * 2)


def test_recorder_only_records_inside_context():
    from avatarkd.distiller import Recorder

    model = nn.Sequential(nn.Linear(3, 3))
    rec = Recorder(model, ["0"], "model")
    model(torch.randn(1, 3))
    assert rec.outputs == {}
    with rec.recording() as out:
        model(torch.randn(1, 3))
    assert out["0"].shape == (1, 3)
