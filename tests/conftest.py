import os
import sys
import zlib
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_data import write_tiny_dataset

# 2 cores in CI; AVATARKD_TEST_THREADS=1 when something else runs beside the suite (2 threads on
# a shared core spin and run many times slower)
torch.set_num_threads(int(os.environ.get("AVATARKD_TEST_THREADS", "2")))

SEED_ENV = "AVATARKD_TEST_SEED"


def test_seed(nodeid: str) -> int:
    """The seed of a test's ``rng``: a stable hash of its node id, or ``$AVATARKD_TEST_SEED`` to reproduce one."""
    if os.environ.get(SEED_ENV):
        return int(os.environ[SEED_ENV])
    return zlib.crc32(nodeid.encode())


test_seed.__test__ = False  # type: ignore[attr-defined]  # not a test, despite its name


@pytest.fixture
def rng(request: pytest.FixtureRequest) -> torch.Generator:
    """A random stream of the test's own: the same inputs whichever tests ran before, or in which order.

    A failing test that used it reports its seed; ``AVATARKD_TEST_SEED=<seed> pytest <test>``
    replays the same inputs.
    """
    seed = test_seed(request.node.nodeid)
    request.node.user_properties.append(("rng seed", seed))
    return torch.Generator().manual_seed(seed)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo):
    report = yield
    seeds = [value for name, value in item.user_properties if name == "rng seed"]
    if report.failed and seeds:
        report.sections.append(("rng seed", f"rng seed {seeds[0]}: rerun with {SEED_ENV}={seeds[0]}"))
    return report


@pytest.fixture(scope="session")
def data_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The tiny dataset (tests/tiny_data.py), written once per session; tests must not modify it."""
    return write_tiny_dataset(tmp_path_factory.mktemp("tiny"))


@pytest.fixture(scope="session")
def untrained_teachers(data_root: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Weights of each task's teacher in test_cli.MODELS, freshly initialised (seed 0): for tests where only
    the architecture matters, instead of training one through the CLI."""
    from test_cli import MODELS, base_config

    from avatarkd.config import TrainConfig
    from avatarkd.tasks import make_task

    out = {}
    folder = tmp_path_factory.mktemp("teachers")
    for task, (teacher, _) in MODELS.items():
        cfg = TrainConfig.model_validate(base_config(task, data_root, folder / task, teacher))
        t = make_task(cfg)
        t.datasets(cfg.data)  # the number of classes
        torch.manual_seed(0)
        out[task] = folder / f"{task}.pt"
        torch.save(t.build_model(cfg.model).state_dict(), out[task])
    return out
