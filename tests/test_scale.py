"""Resume after SIGKILL/SIGTERM is bit-exact; 2-process gloo DDP equals one process on the same global batch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torchvision
from test_cli import base_config, write_config
from tiny_data import NAMES

from avatarkd import AvatarLoss, losses
from avatarkd.cli import main
from avatarkd.engine.checkpoint import list_checkpoints
from avatarkd.engine.test_hooks import SIGNAL_AT

REPO = str(Path(__file__).resolve().parent.parent)
ENV = {
    **os.environ,
    "OMP_NUM_THREADS": "1",
    "PYTHONUNBUFFERED": "1",
    "PYTHONPATH": os.pathsep.join(filter(None, [REPO, os.environ.get("PYTHONPATH")])),
}


@pytest.fixture(scope="module")
def teacher(tmp_path_factory) -> Path:
    """An untrained resnet18 classifier in torchvision's own format: only its architecture matters here."""
    path = tmp_path_factory.mktemp("teacher") / "resnet18.pt"
    torch.manual_seed(0)
    torch.save(torchvision.models.resnet18(num_classes=len(NAMES)).state_dict(), path)
    return path


def _akd_config(data_root: Path, tmp: Path, out: str, steps: int, teacher: Path, **akd) -> Path:
    model = {"arch": "classifier", "backbone": "mobilenet_v3_small"}
    cfg = base_config("classification", data_root, tmp / out, model, steps=steps)
    cfg["train"].update(checkpoint_every=5, keep_last=3, plots=False)
    cfg["teacher"] = {"arch": "classifier", "backbone": "resnet18", "weights": str(teacher)}
    cfg["distill"] = {
        "akd": {"num_avatars": 3, **akd},
        "points": [{"name": "logits", "student": "classifier", "teacher": "fc", "loss": "kd"}],
    }
    return write_config(tmp / f"{out}.yaml", **cfg)


def _train(cfg: Path, *extra: str, nproc: int = 1) -> subprocess.CompletedProcess:
    if nproc > 1:
        cmd = [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            f"--nproc_per_node={nproc}",
            "-m",
            "avatarkd",
            "train",
            str(cfg),
            *extra,
        ]
    else:
        cmd = [sys.executable, "-m", "avatarkd", "train", str(cfg), *extra]
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=600)


def _interrupt(cfg: Path, out: Path, sig: signal.Signals, at: int) -> int:
    """Run ``cfg`` until it sends itself ``sig`` once ``at`` steps are done (a test hook of the loop); its exit code."""
    env = {**ENV, SIGNAL_AT: f"{at}:{sig.name}"}
    proc = subprocess.run(
        [sys.executable, "-m", "avatarkd", "train", str(cfg)], env=env, capture_output=True, timeout=600
    )
    assert not (out / "metrics.json").exists(), "the run was not interrupted"
    return proc.returncode


def _weights(path: Path) -> dict[str, torch.Tensor]:
    return torch.load(path, weights_only=True)


STEPS = 20


@pytest.fixture(scope="module")
def straight(data_root, teacher, tmp_path_factory) -> Path:
    """The uninterrupted run the resumed ones must reproduce bit for bit."""
    tmp = tmp_path_factory.mktemp("straight")
    ref = _train(_akd_config(data_root, tmp, "straight", STEPS, teacher))
    assert ref.returncode == 0, ref.stderr[-2000:]
    assert json.loads((tmp / "straight" / "metrics.json").read_text())["start_step"] == 0
    return tmp / "straight"


# SIGKILL once step 10 (a checkpoint step) is done: resumes from step 10. SIGTERM once step 12 is
# done: seen at the end of step 13, which is saved. 3 batches an epoch: both resume mid-epoch.
@pytest.mark.parametrize(
    "sig,at,saved",
    [(signal.SIGKILL, 10, [5, 10]), (signal.SIGTERM, 12, [5, 10, 13])],
    ids=["SIGKILL", "SIGTERM"],
)
def test_interrupted_and_resumed_run_is_bit_exact(sig, at, saved, data_root, teacher, straight, tmp_path):
    cfg = _akd_config(data_root, tmp_path, "broken", STEPS, teacher)
    code = _interrupt(cfg, tmp_path / "broken", sig, at)
    if sig == signal.SIGKILL:
        assert code == -signal.SIGKILL
    else:
        assert code == 128 + signal.SIGTERM  # saved a checkpoint, then exited
    assert [step for step, _ in list_checkpoints(tmp_path / "broken")] == saved
    resumed = _train(cfg, "--resume")
    assert resumed.returncode == 0, resumed.stderr[-2000:]
    # the resumed process started at the newest checkpoint's step, not silently at step 0
    result = json.loads((tmp_path / "broken" / "metrics.json").read_text())
    assert result["start_step"] == saved[-1] and result["step"] == STEPS
    a, b = _weights(straight / "student.pt"), _weights(tmp_path / "broken" / "student.pt")
    assert a.keys() == b.keys()
    assert all(torch.equal(a[k], b[k]) for k in a), "resumed weights differ from the uninterrupted run"
    # the loss modules' state (uncertainty estimate) resumed too
    ca = torch.load(sorted((straight / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    cb = torch.load(sorted((tmp_path / "broken" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    key = next(k for k in ca["distill"] if k.endswith("uncertainty.running_var"))
    assert torch.equal(ca["distill"][key], cb["distill"][key])


def test_two_process_gloo_ddp_equals_single_process(data_root, teacher, tmp_path):
    outputs = {}
    for nproc in (1, 2):
        model = {"arch": "classifier", "backbone": "resnet18", "freeze_bn": True}  # BN batch stats are per rank
        cfg = base_config("classification", data_root, tmp_path / f"ddp{nproc}", model, steps=3)
        cfg["data"].update(batch_size=4, hflip=0.5)
        cfg["train"].update(plots=False)
        # SGD, not Adam: Adam divides by |grad|, so an element whose gradient is rounding noise
        # (summed in another order over two ranks) would move by +-lr and hide what is compared.
        cfg["optim"] = {"name": "sgd", "lr": 0.1, "momentum": 0.9}
        cfg["teacher"] = {"arch": "classifier", "backbone": "resnet18", "weights": str(teacher)}
        # AKD off: avatars are drawn independently per rank, so only the base loss is comparable
        cfg["distill"] = {
            "akd": {"enabled": False},
            "points": [{"name": "logits", "student": "fc", "teacher": "fc", "loss": "kd"}],
        }
        path = write_config(tmp_path / f"ddp{nproc}.yaml", **cfg)
        if nproc == 1:  # the reference trains in this process (the comparison has a tolerance: threads may differ)
            assert main(["train", str(path)]) == 0
        else:
            result = _train(path, nproc=nproc)
            assert result.returncode == 0, result.stderr[-3000:]
        outputs[nproc] = _weights(tmp_path / f"ddp{nproc}" / "student.pt")
        metrics = json.loads((tmp_path / f"ddp{nproc}" / "metrics.json").read_text())
        assert metrics["world_size"] == nproc  # two processes really trained together
        if nproc == 2:
            assert metrics["replicas_identical"] is True
    one, two = outputs[1], outputs[2]
    before_last = torch.load(tmp_path / "ddp1" / "checkpoints" / "step_0000002.pt", weights_only=False)["model"]
    moved = max((one[k].float() - before_last[k].float()).abs().max().item() for k in one)
    assert moved > 1e-3  # the last step changed the weights by far more than the tolerance below
    for k in one:
        assert torch.allclose(one[k].float(), two[k].float(), rtol=1e-4, atol=1e-5), k


def test_two_process_ddp_with_akd_draws_avatars_per_rank(data_root, teacher, tmp_path):
    """What the README promises with AKD on: per-rank avatar streams, one shared uncertainty estimate."""
    model = {"arch": "classifier", "backbone": "resnet18", "freeze_bn": True}
    cfg = base_config("classification", data_root, tmp_path / "akd2", model, steps=3)
    cfg["train"].update(plots=False)
    cfg["teacher"] = {"arch": "classifier", "backbone": "resnet18", "weights": str(teacher)}
    cfg["distill"] = {
        "akd": {"num_avatars": 2, "uncertainty": "variance"},
        "points": [{"name": "feat", "student": "layer3", "teacher": "layer3", "loss": "mse"}],
    }
    result = _train(write_config(tmp_path / "akd2.yaml", **cfg), nproc=2)
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "akd2" / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["replicas_identical"] is True
    ckpt = torch.load(sorted((tmp_path / "akd2" / "checkpoints").glob("*.pt"))[-1], weights_only=False)
    rank0, rank1 = (r["avatars"] for r in ckpt["rng"])
    assert not torch.equal(rank0, rank1), "both ranks drew the same avatars"
    fresh = [torch.Generator().manual_seed(0 * 7919 + r).get_state() for r in (0, 1)]
    assert not torch.equal(rank0, fresh[0]) and not torch.equal(rank1, fresh[1])  # both streams were used
    var = next(v for k, v in ckpt["distill"].items() if k.endswith("uncertainty.running_var"))
    assert var.numel() == 256 and bool((var >= 0).all()) and bool((var > 0).any())  # ReLU-dead channels are 0


def _sigma_worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)  # first: a forked worker must not use the parent's OpenMP pool
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(rank)
        loss = AvatarLoss(losses.mse, num_avatars=2, generator=g)
        t = torch.randn(2, 4, 3, 3, generator=g) * (rank + 1)  # each rank its own batch
        loss(torch.zeros_like(t), t)
        torch.save(loss.uncertainty.running_var, Path(out_dir) / f"var{rank}.pt")
    finally:
        dist.destroy_process_group()


def test_uncertainty_estimate_is_identical_across_ranks(tmp_path):
    # forked workers: nothing to import again (torchrun of a script costs seconds of imports)
    mp.start_processes(_sigma_worker, args=(str(tmp_path / "init"), str(tmp_path)), nprocs=2, start_method="fork")
    v0, v1 = (torch.load(tmp_path / f"var{r}.pt", weights_only=True) for r in (0, 1))
    assert v0.shape == (4,) and bool((v0 > 0).all()) and torch.equal(v0, v1)
