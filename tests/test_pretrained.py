"""The studies' ImageNet files: the Lite key mapping (always, on random weights) and the cached files (when fetched).

The mapping test builds a random state_dict in the source package's layout from the published
EfficientNet-Lite0 block table (not from timm), maps it onto timm's ``tf_efficientnet_lite0`` and
compares the output with an independent functional forward written here against the source
layout (TF "SAME" padding, ReLU6, BN eps 1e-3): every tensor must land where it is used.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from benchmarks import pretrained as P

timm = pytest.importorskip("timm")

# EfficientNet-Lite0: (repeats, kernel, stride, expand, out channels) per stage; stem 32, head 1280
LITE0 = [(1, 3, 1, 1, 16), (2, 3, 2, 6, 24), (2, 5, 2, 6, 40), (3, 3, 2, 6, 80), (3, 5, 1, 6, 112), (4, 5, 2, 6, 192)]
LITE0 += [(1, 3, 1, 6, 320)]


def _bn(sd: dict, prefix: str, c: int, g: torch.Generator) -> None:
    sd[f"{prefix}.weight"] = torch.rand(c, generator=g) + 0.5
    sd[f"{prefix}.bias"] = torch.randn(c, generator=g) * 0.1
    sd[f"{prefix}.running_mean"] = torch.randn(c, generator=g) * 0.1
    sd[f"{prefix}.running_var"] = torch.rand(c, generator=g) + 0.5
    sd[f"{prefix}.num_batches_tracked"] = torch.tensor(0)


def _conv(out: int, inp: int, k: int, g: torch.Generator) -> torch.Tensor:
    return torch.randn(out, inp, k, k, generator=g) * math.sqrt(2.0 / (inp * k * k))


def source_layout_lite0(seed: int = 0) -> tuple[dict[str, torch.Tensor], list[int]]:
    """A random state_dict in efficientnet-lite-pytorch's layout, and each flat block's stride."""
    g = torch.Generator().manual_seed(seed)
    sd: dict[str, torch.Tensor] = {"_conv_stem.weight": _conv(32, 3, 3, g)}
    _bn(sd, "_bn0", 32, g)
    strides, cin, n = [], 32, 0
    for repeats, k, stride, expand, cout in LITE0:
        for r in range(repeats):
            mid, p = cin * expand, f"_blocks.{n}"
            if expand != 1:
                sd[f"{p}._expand_conv.weight"] = _conv(mid, cin, 1, g)
                _bn(sd, f"{p}._bn0", mid, g)
            sd[f"{p}._depthwise_conv.weight"] = _conv(mid, 1, k, g)
            _bn(sd, f"{p}._bn1", mid, g)
            sd[f"{p}._project_conv.weight"] = _conv(cout, mid, 1, g)
            _bn(sd, f"{p}._bn2", cout, g)
            strides.append(stride if r == 0 else 1)
            cin, n = cout, n + 1
    sd["_conv_head.weight"] = _conv(1280, cin, 1, g)
    _bn(sd, "_bn1", 1280, g)
    sd["_fc.weight"] = torch.randn(1000, 1280, generator=g) * 0.03
    sd["_fc.bias"] = torch.randn(1000, generator=g) * 0.1
    return sd, strides


def _same_conv(x: torch.Tensor, w: torch.Tensor, stride: int, groups: int = 1) -> torch.Tensor:
    """TF 'SAME': output ceil(in / stride), the extra padding row/column at the bottom/right."""
    k, (ih, iw) = w.shape[-1], x.shape[-2:]
    ph = max((math.ceil(ih / stride) - 1) * stride + k - ih, 0)
    pw = max((math.ceil(iw / stride) - 1) * stride + k - iw, 0)
    x = F.pad(x, [pw // 2, pw - pw // 2, ph // 2, ph - ph // 2])
    return F.conv2d(x, w, None, stride, 0, 1, groups)


def reference_forward(sd: dict[str, torch.Tensor], strides: list[int], x: torch.Tensor) -> torch.Tensor:
    def bn(t: torch.Tensor, p: str) -> torch.Tensor:
        return F.batch_norm(
            t, sd[f"{p}.running_mean"], sd[f"{p}.running_var"], sd[f"{p}.weight"], sd[f"{p}.bias"], False, 0.0, 1e-3
        )

    x = F.relu6(bn(_same_conv(x, sd["_conv_stem.weight"], 2), "_bn0"))
    for n, stride in enumerate(strides):
        p, inp = f"_blocks.{n}", x
        if f"{p}._expand_conv.weight" in sd:
            x = F.relu6(bn(_same_conv(x, sd[f"{p}._expand_conv.weight"], 1), f"{p}._bn0"))
        x = F.relu6(bn(_same_conv(x, sd[f"{p}._depthwise_conv.weight"], stride, groups=x.shape[1]), f"{p}._bn1"))
        x = bn(_same_conv(x, sd[f"{p}._project_conv.weight"], 1), f"{p}._bn2")
        if stride == 1 and x.shape == inp.shape:
            x = x + inp
    x = F.relu6(bn(_same_conv(x, sd["_conv_head.weight"], 1), "_bn1"))
    return F.linear(x.mean((2, 3)), sd["_fc.weight"], sd["_fc.bias"])


def test_lite_keys_map_onto_timm_and_reproduce_the_source_forward():
    sd, strides = source_layout_lite0()
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False).eval()
    mapped = P.lite_to_timm(sd, P.stage_layout(model))
    assert len(mapped) == len(sd) and set(mapped) == set(model.state_dict())  # every tensor lands, once
    model.load_state_dict(mapped, strict=True)
    x = torch.rand(2, 3, 72, 96)  # non-square, not a multiple of 32: exercises the asymmetric padding
    with torch.no_grad():
        ours, ref = model(x), reference_forward(sd, strides, x)
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-4)
    # a wrong mapping is caught: swapping two same-shaped blocks' tensors changes the output
    swapped = dict(sd)
    for t in ("_expand_conv.weight", "_project_conv.weight"):
        swapped[f"_blocks.6.{t}"], swapped[f"_blocks.7.{t}"] = sd[f"_blocks.7.{t}"], sd[f"_blocks.6.{t}"]
    model.load_state_dict(P.lite_to_timm(swapped, P.stage_layout(model)), strict=True)
    with torch.no_grad():
        assert not torch.allclose(model(x), ref, atol=1e-3)


def test_unknown_keys_are_refused():
    sd, _ = source_layout_lite0()
    layout = P.stage_layout(timm.create_model("tf_efficientnet_lite0", pretrained=False))
    with pytest.raises(KeyError, match="unknown top-level"):
        P.lite_to_timm({**sd, "_extra.weight": torch.zeros(1)}, layout)
    with pytest.raises(KeyError, match="block 99"):
        P.lite_to_timm({**sd, "_blocks.99._bn1.weight": torch.zeros(1)}, layout)


@pytest.mark.parametrize("name", list(P.FILES))
def test_cached_file_hash_layout_and_sanity_predictions(name):
    if not P.available(name):
        pytest.skip(f"{P.FILES[name].member} not fetched (python benchmarks/pretrained.py --fetch)")
    found = P.verify(name)
    assert found["sha256"] == P.FILES[name].sha256
    assert found["predictions"]["chelsea"]["class"] == "Egyptian cat"
    assert found["predictions"]["coffee"]["class"] == "espresso"


def test_converted_lite_file_loads_as_a_timm_backbone_through_avatarkd():
    """The path the study's configs take: ``backbone: timm:tf_efficientnet_lite0`` + ``backbone_weights``."""
    if not P.available("efficientnet_lite0"):
        pytest.skip("efficientnet-lite0 not fetched (python benchmarks/pretrained.py --fetch)")
    from avatarkd.models.weights import read_state_dict

    path = P.convert(P.FILES["efficientnet_lite0"])
    sd = read_state_dict(path)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False, features_only=True)
    loaded = {k for k in model.state_dict() if k.replace("blocks_", "blocks.") in sd or k in sd}
    assert loaded == set(model.state_dict())


def test_a_file_with_another_hash_is_refused(tmp_path):
    spec = P.FILES["efficientnet_lite2"]
    P.raw_path(spec, tmp_path).parent.mkdir(parents=True)
    P.raw_path(spec, tmp_path).write_bytes(b"not the weights")
    with pytest.raises(ValueError, match="SHA-256"):
        P.verify("efficientnet_lite2", tmp_path)
    with pytest.raises(FileNotFoundError, match="not fetched"):
        P.verify("efficientnet_lite0", tmp_path)
