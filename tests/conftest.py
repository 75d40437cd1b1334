import os

import pytest
import torch

# deterministic, and polite on the shared 2-core machine
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture(autouse=True)
def _restore_threads():
    """Code under test may set the process-wide torch thread count (``bench --threads 1``,
    pre-training's one-thread context): put it back so later tests run as configured."""
    threads = torch.get_num_threads()
    yield
    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)
