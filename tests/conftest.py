import os
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
# 2 cores in CI; AVATARKD_TEST_THREADS=1 when something else runs beside the suite (2 threads on
# a shared core spin and run many times slower)
torch.set_num_threads(int(os.environ.get("AVATARKD_TEST_THREADS", "2")))


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh random stream per test, seeded from the test's own randomness."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return torch.Generator().manual_seed(seed)
