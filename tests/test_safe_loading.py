"""Nothing is unpickled unless the user trusts that file; avatarkd's own files never need it."""

from __future__ import annotations

import ast
import logging
import random
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from test_cli import MODELS, base_config
from tiny_data import run_bad, write_config, write_tiny_dataset

from avatarkd.cli import main
from avatarkd.config import ModelConfig
from avatarkd.engine.checkpoint import rng_state, set_rng_state
from avatarkd.errors import CheckpointError
from avatarkd.loading import load_torch_file
from avatarkd.models import build_classifier, load_configured_weights

PACKAGE = Path(__file__).resolve().parent.parent / "avatarkd"


@pytest.fixture(scope="module")
def data_root(tmp_path_factory) -> Path:
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"), n_train=8, n_val=4)


def distill_config(data_root: Path, out: Path, teacher_weights: Path, **teacher) -> dict:
    cfg = base_config("classification", data_root, out, MODELS["classification"][1], steps=1)
    cfg["train"].update(plots=False)
    cfg["teacher"] = {"arch": "classifier", "backbone": "resnet18", "weights": str(teacher_weights), **teacher}
    cfg["distill"] = {"points": [{"name": "logits", "student": "classifier", "teacher": "fc", "loss": "kd"}]}
    return cfg


def test_a_pickled_teacher_is_refused_in_one_line_and_loads_when_trusted(data_root, tmp_path, capsys, caplog):
    pickled = tmp_path / "teacher_module.pt"
    torch.save(torchvision.models.resnet18(num_classes=2), pickled)  # a whole module: unpickling runs its code
    cfg = write_config(tmp_path / "a.yaml", distill_config(data_root, tmp_path / "a", pickled))
    msg = run_bad(["train", str(cfg)], capsys)
    assert str(pickled) in msg and "teacher.allow_pickle: true" in msg and "holds pickled Python objects (torch" in msg
    assert not (tmp_path / "a").exists()
    trusted = write_config(tmp_path / "b.yaml", distill_config(data_root, tmp_path / "b", pickled, allow_pickle=True))
    with caplog.at_level(logging.WARNING, logger="avatarkd"):
        assert main(["train", str(trusted)]) == 0
    assert re.search(rf"unpickled {re.escape(str(pickled))} \(teacher.allow_pickle: true\)", caplog.text)


def test_a_pickled_student_file_needs_model_allow_pickle(tmp_path, caplog):
    source = torchvision.models.resnet18(num_classes=2)
    torch.save(source, tmp_path / "m.pt")
    model = build_classifier("resnet18", 2)
    with pytest.raises(CheckpointError, match=r"m\.pt: holds pickled Python objects .*set model\.allow_pickle: true"):
        load_configured_weights(model, ModelConfig(arch="classifier", weights=str(tmp_path / "m.pt")), "student")
    # backbone weights are read under the same rule
    with pytest.raises(CheckpointError, match=r"model\.allow_pickle"):
        load_configured_weights(model, ModelConfig(arch="fcn", backbone_weights=str(tmp_path / "m.pt")), "student")
    mcfg = ModelConfig(arch="classifier", weights=str(tmp_path / "m.pt"), allow_pickle=True)
    with caplog.at_level(logging.WARNING, logger="avatarkd"):
        load_configured_weights(model, mcfg, "student")
    assert all(torch.equal(v, source.state_dict()[k]) for k, v in model.state_dict().items())
    assert "(model.allow_pickle: true)" in caplog.text


def test_own_checkpoints_and_exports_load_without_unpickling(data_root, tmp_path, capsys):
    cfg = base_config("classification", data_root, tmp_path / "run", MODELS["classification"][1], steps=2)
    cfg["train"].update(plots=False)
    path = write_config(tmp_path / "c.yaml", cfg)
    assert main(["train", str(path)]) == 0
    ckpt = sorted((tmp_path / "run" / "checkpoints").glob("step_*.pt"))[-1]
    state = torch.load(ckpt, weights_only=True)  # plain torch, no allowlist
    assert state["step"] == 2 and isinstance(state["rng"][0]["numpy"]["keys"], torch.Tensor)
    torch.load(tmp_path / "run" / "student.pt", weights_only=True)
    # resume, eval and export read them through the same refusing loader, with no opt-in
    cfg["train"]["steps"] = 3
    assert main(["train", str(write_config(path, cfg)), "--resume"]) == 0
    assert main(["eval", str(path), "--weights", str(ckpt)]) == 0
    assert main(["export", str(ckpt), "--out", str(tmp_path / "exp.pt")]) == 0
    torch.load(tmp_path / "exp.pt", weights_only=True)


def test_rng_states_round_trip_and_older_numpy_states_still_resume(tmp_path):
    random.seed(3)
    np.random.seed(4)
    torch.manual_seed(5)
    saved = rng_state()
    expected = (random.random(), np.random.rand(), torch.rand(()).item())
    torch.save({"rng": saved}, tmp_path / "new.pt")
    set_rng_state(torch.load(tmp_path / "new.pt", weights_only=True)["rng"])
    assert (random.random(), np.random.rand(), torch.rand(()).item()) == expected
    # a checkpoint from before RNG states were tensors: NumPy's tuple with an ndarray (data, allowlisted)
    legacy = {**saved, "numpy": np.random.get_state()}
    after = np.random.rand()
    torch.save({"rng": legacy}, tmp_path / "old.pt")
    set_rng_state(load_torch_file(tmp_path / "old.pt")["rng"])
    assert np.random.rand() == after


def test_every_torch_load_in_the_package_is_the_one_loader():
    """One place decides what may be unpickled."""

    def calls(path: Path) -> set[str]:
        return {
            ast.unparse(node.func)
            for node in ast.walk(ast.parse(path.read_text()))
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
        }

    found = {str(p.relative_to(PACKAGE)): calls(p) for p in PACKAGE.rglob("*.py")}
    assert [p for p, c in found.items() if "torch.load" in c] == ["loading.py"]
    # torchvision's get_state_dict unpickles (weights_only=False): the hub file is read with the loader
    assert not [p for p, c in found.items() if any(n.endswith("get_state_dict") for n in c)]


def test_missing_truncated_and_foreign_files_are_one_line_errors(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_torch_file(tmp_path / "nope.pt")
    torch.save({"w": torch.zeros(3)}, tmp_path / "ok.pt")
    (tmp_path / "cut.pt").write_bytes((tmp_path / "ok.pt").read_bytes()[:100])
    with pytest.raises(CheckpointError, match="truncated or corrupted"):
        load_torch_file(tmp_path / "cut.pt", allow_pickle=True)
    torch.save(torch.nn.Linear(2, 2), tmp_path / "mod.pt")
    with pytest.raises(CheckpointError, match="not one avatarkd wrote"):  # resume/export: no option to offer
        load_torch_file(tmp_path / "mod.pt")
