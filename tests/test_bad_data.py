"""A bad item the pre-flight sample missed: the run saves its last step, says what to fix, and resumes exactly."""

from __future__ import annotations

import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from test_cli import MODELS, base_config
from tiny_data import write_config, write_tiny_dataset

from avatarkd.cli import main
from avatarkd.config import DataConfig
from avatarkd.data import SizeMismatchError, check_dataset, open_dataset
from avatarkd.engine.checkpoint import list_checkpoints
from avatarkd.errors import DataError, message_of

N_TRAIN, BATCH = 12, 4  # three steps per epoch


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=N_TRAIN, n_val=4)


def last_of_first_epoch(seed: int = 0) -> int:
    """The training item the third step of epoch 0 draws (ResumableSampler's order, one process)."""
    return int(torch.randperm(N_TRAIN, generator=torch.Generator().manual_seed(seed))[-1])


def bad_mask(path: Path) -> None:
    Image.fromarray(np.zeros((40, 50), np.uint8)).save(path)  # 50x40 beside a 32x32 image


def run_config(data_root: Path, out: Path, **data) -> dict:
    cfg = base_config("segmentation", data_root, out, MODELS["segmentation"][1], steps=5)
    cfg["data"].update(batch_size=BATCH, check_samples=1, **data)  # the sample reads item 0 only
    cfg["train"].update(checkpoint_every=100, log_every=100, plots=False)
    return cfg


def test_a_bad_mask_mid_run_saves_the_last_step_and_resume_is_bit_exact(data_root, tmp_path, capsys):
    straight = write_config(tmp_path / "straight.yaml", run_config(data_root, tmp_path / "straight"))
    assert main(["train", str(straight)]) == 0

    data = Path(shutil.copytree(data_root, tmp_path / "data"))
    item = last_of_first_epoch()
    assert item != 0  # outside the pre-flight sample
    mask = data / "train" / "masks" / f"{item:04d}.png"
    bad_mask(mask)
    # one DataLoader worker: the error arrives re-raised in the main process with the worker's traceback
    cfg = write_config(tmp_path / "broken.yaml", run_config(data, tmp_path / "broken", num_workers=1))
    capsys.readouterr()
    assert main(["train", str(cfg)]) == 2
    err = capsys.readouterr().err
    line = err.rstrip("\n").split("\n")[-1]
    assert re.fullmatch(
        rf"avatarkd: error: {re.escape(str(mask))}: mask is 50x40 but its image {item:04d}\.png is 32x32 "
        r"\(found at step 3; step 2 saved to .*step_0000002\.pt\); fix the file and continue with --resume; "
        r"or set data\.skip_unreadable: true to skip such items",
        line,
    ), line
    assert "Traceback" not in err and "\rsegmentation" not in line  # on its own line, below the progress bar
    assert [step for step, _ in list_checkpoints(tmp_path / "broken")] == [2]

    shutil.copy(data_root / "train" / "masks" / mask.name, mask)  # the user fixes the file
    assert main(["train", str(cfg), "--resume"]) == 0
    a = torch.load(tmp_path / "straight" / "student.pt", weights_only=True)
    b = torch.load(tmp_path / "broken" / "student.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_skip_unreadable_skips_and_counts_a_size_mismatched_mask(data_root, tmp_path, caplog):
    data = Path(shutil.copytree(data_root, tmp_path / "data"))
    bad_mask(data / "train" / "masks" / "0003.png")
    config = DataConfig(root=data, num_classes=3, skip_unreadable=True)
    train = open_dataset("segmentation", split="train", config=config, seed=0)
    with caplog.at_level(logging.WARNING, logger="avatarkd"):
        image, target = train[3]  # the next readable item instead
    assert image.shape[-2:] == target.shape == (32, 32)
    assert "skipped (data.skip_unreadable): " in caplog.text and "0003.png: mask is 50x40" in caplog.text
    report = check_dataset(train, "train", None, skip_unreadable=True)
    assert report.unreadable == 1
    strict = open_dataset("segmentation", split="train", config=DataConfig(root=data, num_classes=3), seed=0)
    with pytest.raises(SizeMismatchError, match="0003.png: mask is 50x40"):
        strict[3]


def test_a_worker_error_is_reported_as_its_own_line():
    wrapped = DataError(
        "Caught DataError in DataLoader worker process 0.\nOriginal Traceback (most recent call last):\n"
        '  File "x.py", line 1, in f\navatarkd.errors.DataError: a.png: cannot read image\n'
    )
    assert message_of(wrapped) == "a.png: cannot read image"
    assert message_of(DataError("plain")) == "plain"
