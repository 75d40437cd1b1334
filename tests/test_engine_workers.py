"""A run whose schedule ends mid-epoch must shut its data loader workers down and exit.

The workers block the stop signals (so Ctrl-C reaches only the main process); if the loop left
them waiting for work, multiprocessing's exit handler would terminate (blocked) and then join
them forever. The run goes in a subprocess so that a hang fails the test instead of the suite.
"""
import subprocess
import sys
import textwrap
from pathlib import Path

SCRIPT = textwrap.dedent("""
    import sys
    import torch
    sys.path.insert(0, {tests!r})
    from engine_toy import ToyDataset, ToyDetector
    from vitdet_lib.data.loader import build_loader
    from vitdet_lib.engine.trainer import TrainData, Trainer
    from vitdet_lib.experiment import load_experiment

    cfg = load_experiment({{"data": {{"generated": {{}}}}, "output_dir": {out!r}, "train": {{
        "batch_size": 4, "batch_per_device": 4, "epochs": 0.25, "lr": 1e-2, "eval_at": [],
        "checkpoint_every": 100, "log_every": 1, "num_workers": 1, "device": "cpu"}}}})
    dataset = ToyDataset(64, 16, seed=0)

    def make_loader(epoch, start_batch):
        return build_loader(dataset, 4, num_workers=1, seed=0, epoch=epoch,
                            start_batch=start_batch, drop_last=True)

    torch.manual_seed(0)
    trainer = Trainer(cfg, ToyDetector(), TrainData(num_images=64, make_loader=make_loader))
    trainer.run()  # 4 of the epoch's 16 batches: the worker still has work queued
    print("finished")
""")


def test_run_ending_mid_epoch_exits(tmp_path):
    script = SCRIPT.format(tests=str(Path(__file__).parent), out=str(tmp_path / "run"))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=60, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "finished" in done.stdout
