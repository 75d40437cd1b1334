"""Atomic checkpoint files: keep-last-K, last.pth, and a crash in the middle of a save."""
import os

import pytest
import torch

from vitdet_lib.engine import checkpoint as ckpt
from vitdet_lib.io import torch_save_atomic


def _state(i: int) -> dict:
    return {"iteration": i, "model": {"w": torch.full((64, 64), float(i))}}


def test_keep_last_and_last_pointer(tmp_path):
    for i in (10, 20, 30):
        ckpt.save_checkpoint(_state(i), tmp_path, iteration=i, keep_last=2)
    assert [it for it, _ in ckpt.periodic_checkpoints(tmp_path)] == [20, 30]
    last = ckpt.last_checkpoint(tmp_path)
    assert last is not None and ckpt.load_checkpoint(last)["iteration"] == 30
    assert ckpt.model_state_from({"model": {"module.w": 1}}) == {"w": 1}


def test_crash_during_save_keeps_previous_checkpoint(tmp_path, monkeypatch):
    ckpt.save_checkpoint(_state(1), tmp_path, iteration=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")  # the process dies part-way through writing
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", torn_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save_checkpoint(_state(2), tmp_path, iteration=2)
    monkeypatch.undo()
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before  # no torn file, no leftover temporary, old files byte-identical
    assert ckpt.load_checkpoint(tmp_path / "last.pth")["iteration"] == 1


def test_crash_before_last_pointer_moves(tmp_path, monkeypatch):
    ckpt.save_checkpoint(_state(1), tmp_path, iteration=1)
    real_replace = os.replace

    def dies_on_pointer(src, dst):
        if str(dst).endswith(ckpt.LAST_NAME):
            raise OSError("power cut")
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", dies_on_pointer)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(_state(2), tmp_path, iteration=2)
    monkeypatch.undo()
    # the new file is complete but last.pth still names the previous complete one
    assert ckpt.load_checkpoint(tmp_path / "last.pth")["iteration"] == 1
    assert ckpt.load_checkpoint(tmp_path / ckpt.checkpoint_name(2))["iteration"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        ckpt.checkpoint_name(1), ckpt.checkpoint_name(2), ckpt.LAST_NAME]  # no temporary left


def test_rng_state_round_trip_through_file(tmp_path):
    import random

    import numpy as np

    state = ckpt.capture_rng_state()
    torch_save_atomic({"rng": state}, tmp_path / "r.pth")
    expected = (random.random(), np.random.rand(), torch.rand(1).item())
    ckpt.restore_rng_state(ckpt.load_checkpoint(tmp_path / "r.pth")["rng"])  # weights_only
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == expected
