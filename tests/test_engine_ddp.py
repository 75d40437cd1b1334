"""2-process DDP (gloo, CPU) trains the same model as 1 process at the same effective batch,
and a 2-process run killed mid-schedule resumes to the uninterrupted run's weights."""
import json

import pytest
import torch
from engine_toy import ToyDetector, toy_train_data
from gloo import run_gloo

from vitdet_lib.engine import checkpoint as ckpt
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


def _trainer(cfg, info=None, init_seed=123, dropout=0.1):
    torch.manual_seed(init_seed)  # initial weights (DDP then broadcasts rank 0's)
    return Trainer(cfg, ToyDetector(dropout=dropout), toy_train_data(cfg, info), info)


def _worker(rank, out):
    """Rank ``rank`` of three 2-process runs: one without dropout (to compare with a single
    process), one uninterrupted with dropout, and one with dropout killed after step 6 and
    resumed by a new trainer."""
    info = du.init_distributed("cpu")
    assert (info.rank, info.world_size) == (rank, 2)
    plain = _trainer(_cfg(out / "plain"), info, dropout=0.0)
    plain_summary = plain.run()
    full = _trainer(_cfg(out / "full"), info)
    full.run()
    cut = _cfg(out / "cut")
    assert _trainer(cut, info).run(stop_at=6) == {"stopped_at": 6}  # last.pth: step 4
    # the resuming processes start from other weights and RNG states, per rank
    resumed = _trainer(cut, info, init_seed=1000 + rank)
    torch.manual_seed(77 + rank)
    resumed.run()
    torch.save({"plain": plain.model.state_dict(), "summary": plain_summary,
                "full": full.model.state_dict(), "resumed": resumed.model.state_dict(),
                "resumed_calls": resumed.model.train_calls}, out / f"rank{rank}.pth")


@pytest.fixture(scope="module")
def ddp_runs(tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp")
    run_gloo(_worker, out, out)
    return out, [torch.load(out / f"rank{r}.pth", weights_only=False) for r in (0, 1)]


def test_two_process_ddp_matches_single_process(ddp_runs, tmp_path):
    _, ranks = ddp_runs
    single = _trainer(_cfg(tmp_path / "single"), dropout=0.0)
    summary = single.run()
    ddp = ranks[0]["summary"]
    assert (summary["accumulation"], ddp["accumulation"]) == (4, 2)
    assert ddp["world_size"] == 2 and ddp["iterations"] == 8
    for name, value in single.model.state_dict().items():
        torch.testing.assert_close(ranks[0]["plain"][name], value, **TOLERANCE, msg=name)
        assert torch.equal(ranks[0]["plain"][name], ranks[1]["plain"][name]), name


def test_two_process_run_killed_and_resumed_equals_uninterrupted(ddp_runs):
    out, ranks = ddp_runs
    for rank in ranks:
        # each rank ran steps 5-8 only after resuming: 4 steps x 2 micro-batches
        assert rank["resumed_calls"] == 4 * 2
        for name, value in rank["full"].items():
            assert torch.equal(value, rank["resumed"][name]), name  # bitwise on CPU
            assert torch.equal(value, ranks[0]["full"][name]), name  # replicas stayed equal
    # rank 0 alone wrote the records; the checkpoint holds both ranks' RNG states
    state = ckpt.load_checkpoint(out / "cut" / "last.pth")
    assert len(state["rng"]) == 2 and state["world_size"] == 2 and state["iteration"] == 8
    iters = [json.loads(line)["iter"] for line in (out / "cut" / "metrics.jsonl").open()]
    assert iters == [1, 4, 8]
