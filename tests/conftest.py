import os

import pytest
import torch

# deterministic, and polite on the shared 2-core machine
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
