"""The training loop's numerics are pinned: fixed-seed loss curves of a tiny fine-tuning run and
of each pre-training method, recorded before the loop was refactored, are reproduced exactly."""
import json

import pytest
import torch
from loss_curves import METHODS, fixture_path, record


@pytest.fixture(autouse=True)
def one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # bitwise reproducible reductions on CPU
    yield
    torch.set_num_threads(n)


@pytest.mark.parametrize("name", ["finetune", *METHODS])
def test_loss_curve_is_reproduced_exactly(name, tmp_path):
    expected = json.loads(fixture_path(name).read_text())
    got = record(name, tmp_path)
    assert len(got) == len(expected)
    for step, (a, b) in enumerate(zip(got, expected), start=1):
        assert a == b, f"{name}: step {step} differs: {a} != {b}"
