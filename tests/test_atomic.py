"""The one atomic writer every file goes through: readers never see a torn file, writers never collide."""

from __future__ import annotations

import json
import math
import multiprocessing as mp
import os
import re
import stat
from pathlib import Path

import pytest
import torch

from avatarkd.atomic import atomic_torch_save, atomic_write, atomic_write_bytes, atomic_write_json

SIZE = 256 * 1024


def _writer(path: str, fill: int, rounds: int, start: mp.Event, wrote: mp.Event, go_on: mp.Event) -> None:
    start.wait()
    for i in range(rounds):
        atomic_write_bytes(path, bytes([fill]) * SIZE)
        if i == 0:  # one whole file written: let the reader see it before racing on
            wrote.set()
            go_on.wait()


def test_two_concurrent_writers_never_leave_a_torn_or_mixed_file(tmp_path):
    path = tmp_path / "shared.bin"
    atomic_write_bytes(path, bytes([0]) * SIZE)
    ctx = mp.get_context("fork")
    start, go_on = ctx.Event(), ctx.Event()
    wrote = [ctx.Event(), ctx.Event()]
    writers = [
        ctx.Process(target=_writer, args=(str(path), fill, 150, start, done, go_on))
        for fill, done in zip((1, 2), wrote, strict=True)
    ]
    for w in writers:
        w.start()
    start.set()
    # both writers have written once and wait: the file is one writer's, whole (no scheduler luck needed)
    assert all(done.wait(timeout=120) for done in wrote), "a writer did not start"
    seen = {path.read_bytes()[0]}
    assert seen <= {1, 2} and path.read_bytes() in (bytes([1]) * SIZE, bytes([2]) * SIZE)
    go_on.set()
    while any(w.is_alive() for w in writers):  # now they race each other and this reader
        data = path.read_bytes()
        assert len(data) == SIZE, "a reader saw a partly written file"
        assert len(set(data)) == 1, "a reader saw bytes of two writers in one file"
        seen.add(data[0])
    for w in writers:
        w.join()
        assert w.exitcode == 0
    final = path.read_bytes()
    assert len(final) == SIZE and final[0] in (1, 2) and len(set(final)) == 1
    assert seen <= {1, 2}, "a reader saw the file from before both writers' first write"
    assert [p.name for p in tmp_path.iterdir()] == ["shared.bin"], "temporary files were left behind"


def test_failure_keeps_the_old_file_and_no_temporary(tmp_path):
    path = atomic_write_bytes(tmp_path / "x.bin", b"old")

    def broken(f):
        f.write(b"half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        atomic_write(path, broken)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["x.bin"]


def test_files_get_the_usual_permissions_and_json_is_valid(tmp_path):
    path = atomic_write_json(tmp_path / "m.json", {"miou": math.nan, "n": 3, "p": tmp_path})
    assert json.loads(path.read_text()) == {"miou": None, "n": 3, "p": str(tmp_path)}
    umask = os.umask(0)
    os.umask(umask)
    assert stat.S_IMODE(path.stat().st_mode) == 0o666 & ~umask  # not mkstemp's 0600
    saved = atomic_torch_save({"w": torch.arange(3)}, tmp_path / "c.pt")
    assert torch.equal(torch.load(saved, weights_only=True)["w"], torch.arange(3))


def test_every_writer_in_the_package_uses_the_atomic_helper():
    """No module writes a final file by hand (open(..., 'w'), write_text, torch.save to a path)."""
    root = Path(__file__).resolve().parent.parent / "avatarkd"
    offenders = []
    for path in root.rglob("*.py"):
        if path.name == "atomic.py":
            continue
        text = path.read_text()
        for needle in (r"\.write_text\(", r"\.write_bytes\(", r"\btorch\.save\(", r"\btempfile\b", r"\bos\.replace\("):
            if re.search(needle, text):
                offenders.append(f"{path.relative_to(root)}: {needle}")
    assert not offenders, offenders
