import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
torch.set_num_threads(2)


@pytest.fixture
def rng() -> torch.Generator:
    """A fresh random stream per test, seeded from the test's own randomness."""
    seed = int(torch.randint(0, 2**31 - 1, (1,)).item())
    return torch.Generator().manual_seed(seed)
