"""2-process DDP (gloo, CPU) trains the same model as 1 process at the same effective batch."""
import os
import socket

import torch
import torch.multiprocessing as mp
from engine_toy import ToyDetector, toy_train_data

from vitdet_lib.engine import distributed as du
from vitdet_lib.engine.trainer import Trainer
from vitdet_lib.experiment import load_experiment

# float32 sums in another order (gradient all-reduce vs accumulation), amplified a little by
# Adam over 8 steps; measured differences are ~1e-7
TOLERANCE = {"rtol": 1e-5, "atol": 1e-5}


def _cfg(out):
    # 8 images per step: 1 process = 4 x 2 accumulated, 2 processes = 2 x 2 each
    return load_experiment({"data": {"generated": {}}, "output_dir": str(out), "train": {
        "batch_size": 8, "batch_per_device": 2, "epochs": 2, "lr": 1e-2, "eval_at": [1.0],
        "checkpoint_every": 4, "log_every": 4, "num_workers": 0, "device": "cpu"}})


def _run(cfg, info=None):
    torch.manual_seed(123)  # identical initial weights (DDP also broadcasts rank 0's)
    trainer = Trainer(cfg, ToyDetector(dropout=0.0), toy_train_data(cfg, info), info)
    return trainer, trainer.run()


def _worker(rank, world_size, port, out, result):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank),
                      WORLD_SIZE=str(world_size), LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    info = du.init_distributed("cpu")
    try:
        trainer, summary = _run(_cfg(out), info)
        if info.is_main:
            torch.save({"model": trainer.model.state_dict(), "summary": summary}, result)
    finally:
        du.shutdown()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(tmp_path):
    result = tmp_path / "ddp.pth"
    mp.start_processes(_worker, args=(2, _free_port(), tmp_path / "ddp", result), nprocs=2,
                       start_method="spawn")
    ddp = torch.load(result, weights_only=False)
    single, summary = _run(_cfg(tmp_path / "single"))
    assert (summary["accumulation"], ddp["summary"]["accumulation"]) == (4, 2)
    assert ddp["summary"]["world_size"] == 2 and ddp["summary"]["iterations"] == 8
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ddp["model"][name], value, **TOLERANCE, msg=name)
    # rank 0 alone wrote the records; the checkpoint holds both ranks' RNG states
    state = torch.load(tmp_path / "ddp" / "last.pth", weights_only=True)
    assert len(state["rng"]) == 2 and state["world_size"] == 2
