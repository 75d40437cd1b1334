"""The training loop's failure handling, each failure made to happen: no output directory, a
schedule without iterations, a loader without batches, a resume at another world size, and a
file system without hard links for ``last.pth``."""
import logging
import os

import pytest
import torch
from engine_toy import ToyDetector, toy_train_data

from vitdet_lib.config import ConfigError
from vitdet_lib.engine import checkpoint as ckpt
from vitdet_lib.engine.trainer import Trainer
from vitdet_lib.experiment import load_experiment


def _cfg(out, **train):
    base = {"batch_size": 4, "batch_per_device": 2, "epochs": 1.0, "lr": 1e-2, "eval_at": [1.0],
            "checkpoint_every": 4, "log_every": 2, "num_workers": 0, "device": "cpu"}
    data = {"data": {"generated": {}}, "train": {**base, **train}}
    if out is not None:
        data["output_dir"] = str(out)
    return load_experiment(data)


def test_no_output_directory(tmp_path):
    with pytest.raises(ConfigError, match="output_dir is not set"):
        Trainer(_cfg(None), ToyDetector(), toy_train_data(_cfg(tmp_path)))


def test_a_schedule_without_iterations(tmp_path):
    cfg = _cfg(tmp_path, epochs=0.05)  # 32 images * 0.05 epochs < one batch of 4
    with pytest.raises(ConfigError, match="no iteration"):
        Trainer(cfg, ToyDetector(), toy_train_data(cfg))


def test_fewer_images_than_one_batch(tmp_path):
    cfg = _cfg(tmp_path, max_iters=2)
    trainer = Trainer(cfg, ToyDetector(), toy_train_data(cfg, num_images=1))  # batch of 2
    with pytest.raises(RuntimeError, match="fewer training images than one batch"):
        trainer.run()


def test_resume_at_another_world_size_reseeds_and_finishes(tmp_path, caplog):
    """A checkpoint of a 2-process run resumed by one process: the data position and weights
    are restored, the RNG streams cannot be, and the log says so."""
    cfg = _cfg(tmp_path)  # 8 steps
    assert Trainer(cfg, ToyDetector(), toy_train_data(cfg)).run(stop_at=4) == {"stopped_at": 4}
    state = ckpt.load_checkpoint(tmp_path / "last.pth")
    state["world_size"], state["rng"] = 2, state["rng"] * 2
    torch.save(state, tmp_path / "last.pth")
    resumed = Trainer(cfg, ToyDetector(), toy_train_data(cfg))
    with caplog.at_level(logging.WARNING, logger="vitdet_lib.engine.trainer"):
        summary = resumed.run()
    assert "RNG streams reseeded" in caplog.text and "world_size=1" in caplog.text
    assert summary["iterations"] == 8 and resumed.model.train_calls == (8 - 4) * 2


def test_last_is_an_independent_copy_of_the_newest_checkpoint(tmp_path):
    state = {"model": {"w": torch.arange(3.0)}, "iteration": 1}
    saved = ckpt.save_checkpoint(state, tmp_path / "run", iteration=1)
    last = tmp_path / "run" / "last.pth"
    assert os.stat(saved).st_ino != os.stat(last).st_ino  # a file of its own...
    assert last.read_bytes() == saved.read_bytes()  # ...with the same checkpoint
    last.write_bytes(last.read_bytes()[:10])  # truncating it leaves the numbered one intact
    assert torch.equal(ckpt.load_checkpoint(saved)["model"]["w"], torch.arange(3.0))
    assert sorted(p.name for p in last.parent.iterdir()) == ["checkpoint_0000001.pth", "last.pth"]
