"""Augmentation: image and mask stay aligned through every transform; randomness is per sample and explicit."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from avatarkd.data import Augmented, set_epoch
from avatarkd.data.transforms import (
    CenterCrop,
    ClassificationAugment,
    SegmentationAugment,
    fit_scale,
    photometric_distortion,
    random_resized_box,
)
from avatarkd.data.wrappers import sample_seed

IGNORE = 255
# label k is painted PALETTE[k]; no entry is black, so padding (image 0, mask ignore) is recognisable
PALETTE = torch.tensor([[0.9, 0.1, 0.1], [0.1, 0.8, 0.2], [0.2, 0.3, 0.9], [0.9, 0.9, 0.2], [0.6, 0.2, 0.7]])


def coloured_sample(
    height: int = 48, width: int = 80, seed: int = 0, block: int = 12
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocks of ``block`` pixels with random labels; the image's colour at a pixel encodes its label."""
    g = torch.Generator().manual_seed(seed)
    blocks = torch.randint(0, len(PALETTE), (height // block + 1, width // block + 1), generator=g)
    mask = blocks.repeat_interleave(block, 0).repeat_interleave(block, 1)[:height, :width].contiguous()
    image = PALETTE[mask].permute(2, 0, 1).contiguous()
    return image, mask


def decoded(image: torch.Tensor) -> torch.Tensor:
    """The label whose colour is nearest each pixel."""
    distance = (image.permute(1, 2, 0)[:, :, None, :] - PALETTE[None, None]).pow(2).sum(-1)
    return distance.argmin(-1)


def interior(mask: torch.Tensor) -> torch.Tensor:
    """Pixels whose 3x3 neighbourhood carries one label (interpolation may blend colours at edges)."""
    m = mask.float()[None, None]
    same = (torch.nn.functional.max_pool2d(m, 3, 1, 1) == torch.nn.functional.max_pool2d(-m, 3, 1, 1).neg())[0, 0]
    return same & (mask != IGNORE)


def assert_aligned(image: torch.Tensor, mask: torch.Tensor) -> None:
    assert image.shape[-2:] == mask.shape and image.dtype == torch.float32 and mask.dtype == torch.int64
    inside = interior(mask)
    assert inside.sum() > 0.25 * (mask != IGNORE).sum()  # the check below covers much of the image
    labels = decoded(image)
    assert torch.equal(labels[inside], mask[inside])
    # a pixel whose colour is unblended, even on an edge, carries that colour's label
    pure = ((image - PALETTE[labels].permute(2, 0, 1)).abs().amax(0) < 1e-5) & (mask != IGNORE)
    assert torch.equal(labels[pure], mask[pure])
    pad = mask == IGNORE
    assert torch.all(image[:, pad] == 0)  # padding: image 0 exactly where the mask is ignore
    assert torch.all(image.amax(0)[~pad] > 0.05)


@pytest.mark.parametrize(
    "options",
    [
        {"hflip": 1.0},
        {"hflip": 0.0, "scale_range": (0.5, 2.0)},
        {"hflip": 0.0, "crop_size": (40, 40)},
        {"hflip": 0.0, "crop_size": (64, 96)},  # larger than the image: padded
        {"hflip": 0.0, "scale_range": (0.5, 0.5), "base_size": (32, 64)},
        {"hflip": 0.5, "scale_range": (0.5, 2.0), "crop_size": (40, 56)},
    ],
    ids=["flip", "rescale", "crop", "pad", "base-size", "all"],
)
def test_every_geometric_transform_keeps_image_and_mask_aligned(options):
    image, mask = coloured_sample()
    augment = SegmentationAugment(ignore_index=IGNORE, **options)
    for seed in range(8):
        out_image, out_mask = augment(image, mask, generator=torch.Generator().manual_seed(seed))
        assert_aligned(out_image, out_mask)
        if "crop_size" in options:
            assert tuple(out_mask.shape) == options["crop_size"]
    if options.get("hflip") == 1.0:
        assert torch.equal(out_mask, mask.flip(-1)) and torch.equal(out_image, image.flip(-1))


def test_rescale_follows_base_size_and_ratio():
    image, mask = coloured_sample(48, 80)
    out, out_mask = SegmentationAugment(hflip=0.0, scale_range=(0.5, 0.5), base_size=(32, 64))(
        image, mask, generator=torch.Generator()
    )
    # fit 48x80 into 32 (short) x 64 (long): factor min(64/80, 32/48) = 2/3, then x0.5
    assert tuple(out.shape[-2:]) == (16, 27) and tuple(out_mask.shape) == (16, 27)
    assert fit_scale(1024, 2048, (1024, 2048)) == 1.0 and fit_scale(512, 512, (1024, 2048)) == 2.0
    sizes = {
        SegmentationAugment(hflip=0.0, scale_range=(0.5, 2.0))(image, mask, generator=torch.Generator().manual_seed(s))[
            1
        ].shape[0]
        for s in range(20)
    }
    assert min(sizes) >= 24 and max(sizes) <= 96 and len(sizes) > 5


def test_photometric_changes_colours_not_geometry():
    image, mask = coloured_sample()
    plain = SegmentationAugment(hflip=0.5, scale_range=(0.75, 1.5), crop_size=(40, 40), ignore_index=IGNORE)
    photo = SegmentationAugment(
        hflip=0.5, scale_range=(0.75, 1.5), crop_size=(40, 40), ignore_index=IGNORE, photometric=True
    )
    changed = 0
    for seed in range(10):
        a_img, a_mask = plain(image, mask, generator=torch.Generator().manual_seed(seed))
        b_img, b_mask = photo(image, mask, generator=torch.Generator().manual_seed(seed))
        assert torch.equal(a_mask, b_mask)  # the same geometry: photometric draws come after it
        assert 0.0 <= float(b_img.min()) and float(b_img.max()) <= 1.0
        # a per-pixel colour map: pixels of one colour before are of one colour after
        for label in a_mask[a_mask != IGNORE].unique():
            sel = (a_img - PALETTE[label][:, None, None]).abs().amax(0) < 1e-6  # unblended pixels of this label
            assert sel.sum() > 0 and torch.equal(a_mask[sel], torch.full_like(a_mask[sel], int(label)))
            assert float((b_img[:, sel] - b_img[:, sel][:, :1]).abs().max()) < 1e-5
        changed += int(not torch.allclose(a_img, b_img))
    assert changed >= 5


def test_photometric_alone_is_seeded():
    image, _ = coloured_sample()
    a = photometric_distortion(image.clone(), torch.Generator().manual_seed(3))
    b = photometric_distortion(image.clone(), torch.Generator().manual_seed(3))
    assert torch.equal(a, b)


def test_classification_crops():
    image = torch.rand(3, 30, 50)
    for seed in range(10):
        top, left, h, w = random_resized_box(30, 50, torch.Generator().manual_seed(seed))
        assert 0 <= top and top + h <= 30 and 0 <= left and left + w <= 50 and h > 0 and w > 0
    out, label = ClassificationAugment(crop_size=(16, 16), hflip=0.5)(image, 3, generator=torch.Generator())
    assert out.shape == (3, 16, 16) and label == 3
    out, _ = CenterCrop((16, 16))(image, 1)
    assert out.shape == (3, 16, 16)


class _Indexed(Dataset):
    """Sample i is (coloured image i, its mask)."""

    def __len__(self) -> int:
        return 6

    def __getitem__(self, index: int):
        return coloured_sample(24, 40, seed=index)


def _epoch(dataset: Augmented, epoch: int, workers: int) -> list[torch.Tensor]:
    set_epoch(dataset, epoch)
    loader = DataLoader(dataset, batch_size=2, num_workers=workers, generator=torch.Generator())
    return [torch.cat([x.flatten(), y.flatten().float()]) for x, y in loader]


def test_augmentation_depends_on_seed_epoch_index_only_and_not_on_the_global_rng():
    ds = Augmented(_Indexed(), SegmentationAugment(hflip=0.5, scale_range=(0.5, 1.5), crop_size=(16, 16)), seed=11)
    state = torch.get_rng_state()
    first = _epoch(ds, 0, workers=0)
    ds[2]
    assert torch.equal(torch.get_rng_state(), state)  # nothing drawn from (or re-seeded on) the global RNG
    torch.manual_seed(1234)  # a different global state changes nothing
    assert all(torch.equal(a, b) for a, b in zip(first, _epoch(ds, 0, workers=0), strict=True))
    assert all(
        torch.equal(a, b) for a, b in zip(first, _epoch(ds, 0, workers=2), strict=True)
    )  # worker count is irrelevant
    assert not all(
        torch.equal(a, b) for a, b in zip(first, _epoch(ds, 1, workers=0), strict=True)
    )  # a new epoch, new draws
    other = Augmented(_Indexed(), ds.transform, seed=12)
    assert not all(torch.equal(a, b) for a, b in zip(first, _epoch(other, 0, workers=0), strict=True))
    ds.set_epoch(0)
    assert torch.equal(ds[3][1], ds[3][1])  # one sample drawn twice alike (resume reads it again)


def test_sample_seeds_do_not_collide_across_epochs():
    seeds = {sample_seed(0, epoch, index) for epoch in range(20) for index in range(0, 50_000, 997)}
    assert len(seeds) == 20 * len(range(0, 50_000, 997))


def test_sample_generators_depend_on_seed_epoch_and_index_only():
    """Same (seed, epoch, index): the same stream, wherever and whenever it is made; any change: another."""
    from avatarkd.data.wrappers import sample_generator

    def stream(seed: int, epoch: int, index: int) -> torch.Tensor:
        return torch.randint(0, 2**62, (4,), generator=sample_generator(seed, epoch, index))

    keys = [(s, e, i) for s in (0, 1, 2**40 + 3) for e in (0, 1, 7) for i in (0, 1, 2, 1000, 2**31)]
    streams = {key: stream(*key) for key in keys}
    assert all(torch.equal(streams[key], stream(*key)) for key in keys)  # same numbers: same stream
    assert len({tuple(v.tolist()) for v in streams.values()}) == len(keys)  # any change: another stream
    # neighbouring seeds, epochs and indices differ in about half of their seed bits (no structure)
    flips = [bin(sample_seed(0, 0, i) ^ sample_seed(0, 0, i + 1)).count("1") for i in range(200)]
    assert 24 < sum(flips) / len(flips) < 40
    assert sample_seed(-1, 0, 0) == sample_seed(2**64 - 1, 0, 0)  # negative seeds wrap like the old one
