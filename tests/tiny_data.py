"""A tiny dataset in avatarkd's layout, drawn with rectangles: fast fixtures for engine/CLI tests."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

NAMES = ["square", "bar"]


def write_tiny_dataset(root: Path, n_train: int = 12, n_val: int = 6, size: int = 32, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    for split, n in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True, exist_ok=True)
        (root / split / "masks").mkdir(parents=True, exist_ok=True)
        images, anns = [], []
        for i in range(n):
            img = (rng.random((size, size, 3)) * 60).astype(np.uint8)
            mask = np.zeros((size, size), np.uint8)
            for _ in range(rng.integers(1, 3)):
                cls = int(rng.integers(1, 3))
                w, h = (
                    (int(rng.integers(8, 14)),) * 2
                    if cls == 1
                    else (int(rng.integers(4, 7)), int(rng.integers(12, 18)))
                )
                x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
                img[y : y + h, x : x + w] = (200, 80, 40) if cls == 1 else (40, 200, 90)
                mask[y : y + h, x : x + w] = cls
                anns.append(
                    {
                        "id": len(anns) + 1,
                        "image_id": i + 1,
                        "category_id": cls,
                        "bbox": [x, y, w, h],
                        "area": w * h,
                        "iscrowd": 0,
                    }
                )
            Image.fromarray(img).save(root / split / "images" / f"{i:04d}.png")
            Image.fromarray(mask).save(root / split / "masks" / f"{i:04d}.png")
            images.append({"id": i + 1, "file_name": f"{i:04d}.png", "width": size, "height": size})
        cats = [{"id": k + 1, "name": n} for k, n in enumerate(NAMES)]
        (root / split / "annotations.json").write_text(
            json.dumps({"images": images, "annotations": anns, "categories": cats})
        )
        for k, name in enumerate(NAMES):
            folder = root / "classify" / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for j in range(max(2, n // 2)):
                img = (rng.random((16, 16, 3)) * 60).astype(np.uint8)
                if k == 0:
                    img[4:12, 4:12] = (200, 80, 40)
                else:
                    img[2:14, 6:10] = (40, 200, 90)
                Image.fromarray(img).save(folder / f"{j}.png")
    return root


def write_config(path: Path, cfg: dict) -> Path:
    """A config dict as YAML (paths and other objects as strings)."""
    import yaml

    path.write_text(yaml.safe_dump(json.loads(json.dumps(cfg, default=str))))
    return path


# a two-step run on a few samples: what the smoke tests add to a shipped or example config
SMOKE_RUN = [
    "train.steps=2",
    "train.log_every=1",
    "train.eval_every=null",
    "train.checkpoint_every=2",
    "train.plots=false",
    "data.limit_train=8",
    "data.limit_val=4",
    "data.batch_size=4",
]


def run_bad(argv: list[str], capsys) -> str:
    """Run the CLI on bad input: exit status 2 and one ``avatarkd: error:`` line, no traceback; returns it."""
    from avatarkd.cli import main

    capsys.readouterr()
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("avatarkd: error: ") and "\n" not in err and "Traceback" not in err, err
    return err
