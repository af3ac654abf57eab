"""A point's ``key`` picks an item of a dict/tuple output; on a tensor output it is one clear error, never an index."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

from avatarkd import DistillationError, Distiller, DistillPoint
from avatarkd import losses as L


@pytest.mark.parametrize("key", ["out", 0])
def test_a_key_on_a_tensor_output_is_refused_without_indexing_it(key):
    student, teacher = nn.Sequential(nn.Conv2d(3, 4, 1)), nn.Sequential(nn.Conv2d(3, 4, 1))
    point = DistillPoint("feat", "0", "0", loss=L.mse, key=key)
    with warnings.catch_warnings():
        # torch reads tensor["out"] as a non-tuple index sequence: deprecated, another meaning later
        warnings.filterwarnings("error", message="Using a non-tuple sequence", category=UserWarning)
        with pytest.raises(
            DistillationError, match=rf"student output of '0' has no item {key!r} \(it is a tensor of shape"
        ):
            Distiller(student, teacher.eval(), [point]).build(torch.randn(2, 3, 4, 4))


def test_a_key_picks_an_item_of_a_dict_output():
    class Dict(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Conv2d(3, 4, 1)

        def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
            return {"out": self.body(x), "aux": x}

    student, teacher = nn.Sequential(Dict()), nn.Sequential(Dict()).eval()
    d = Distiller(student, teacher, [DistillPoint("feat", "0", "0", loss=L.mse, key="out")])
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        _, losses = d.build(torch.randn(2, 3, 4, 4))(torch.randn(2, 3, 4, 4))
    assert set(losses) == {"distill.feat", "distill_total"}
