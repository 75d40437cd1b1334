"""Stopping and resuming safely: stop signals save a checkpoint and raise, a corrupt last.pth
falls back to an older checkpoint, and a resume with another config is refused (or allowed and
recorded) before anything is written."""
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from engine_toy import ToyDetector, toy_train_data

from vitdet_lib import cli
from vitdet_lib.engine import checkpoint as ckpt
from vitdet_lib.engine.hooks import HookBase, PeriodicEvaluation
from vitdet_lib.engine.resume import CHANGES_NAME, ResumeConflictError
from vitdet_lib.engine.trainer import Trainer
from vitdet_lib.errors import TrainingInterrupted
from vitdet_lib.experiment import load_experiment


def _cfg(out, **train):
    base = {"batch_size": 4, "batch_per_device": 2, "epochs": 1.5, "lr": 1e-2, "eval_at": [1.0],
            "checkpoint_every": 4, "log_every": 2, "num_workers": 0, "device": "cpu"}
    return load_experiment({"data": {"generated": {}}, "output_dir": str(out),
                            "train": {**base, **train}})


def _trainer(cfg, **kwargs):
    torch.manual_seed(123)  # same initial weights for every trainer of a test
    return Trainer(cfg, ToyDetector(), toy_train_data(cfg), **kwargs)


class _Signal(HookBase):
    """Sends ``signals`` to this process after step ``at`` (as a Ctrl-C or SLURM would)."""

    def __init__(self, at, *signals):
        self.at, self.signals = at, signals

    def after_step(self, record):
        if self.loop.iteration == self.at:
            for sig in self.signals:
                os.kill(os.getpid(), sig)


def _same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.model.state_dict().values(),
                                                   b.model.state_dict().values()))


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1],
                         ids=["SIGINT", "SIGTERM", "SIGUSR1"])
def test_stop_signal_saves_the_step_and_the_run_resumes_exactly(tmp_path, sig):
    full = _trainer(_cfg(tmp_path / "full"))
    full.run()
    cfg = _cfg(tmp_path / "cut")
    cut = _trainer(cfg)
    cut.hooks.insert(0, _Signal(5, sig))  # before the checkpoint hook: step 5 is not periodic
    cut.hooks[0].loop = cut
    previous = signal.getsignal(sig)
    with pytest.raises(TrainingInterrupted) as info:
        cut.run()
    err = info.value
    assert (err.signal_name, err.iteration, err.exit_code) == (sig.name, 5, 130)
    assert err.checkpoint == tmp_path / "cut" / ckpt.checkpoint_name(5)
    assert ckpt.load_checkpoint(tmp_path / "cut" / "last.pth")["iteration"] == 5
    assert "to resume: rerun the same command" in str(err)
    assert "to resume: vitdet-bench train x" in str(err.with_resume_command("vitdet-bench train x"))
    assert signal.getsignal(sig) == previous  # the handler is restored after the loop
    resumed = _trainer(cfg)
    assert resumed.run()["iterations"] == 12
    assert _same_weights(full, resumed)  # bitwise on CPU: the interrupt lost nothing


def test_second_signal_aborts_at_once_without_saving(tmp_path):
    trainer = _trainer(_cfg(tmp_path))
    trainer.register(_Signal(5, signal.SIGINT, signal.SIGINT))
    with pytest.raises(KeyboardInterrupt):
        trainer.run()
    assert ckpt.load_checkpoint(tmp_path / "last.pth")["iteration"] == 4  # the periodic one


def test_last_is_an_independent_copy_and_a_corrupt_one_falls_back(tmp_path, caplog):
    full = _trainer(_cfg(tmp_path / "full"))
    full.run()
    cfg = _cfg(tmp_path / "cut")
    _trainer(cfg).run(stop_at=10)  # checkpoints at 4 and 8; last.pth holds 8
    out = tmp_path / "cut"
    assert os.stat(out / "last.pth").st_nlink == 1
    good = (out / ckpt.checkpoint_name(8)).read_bytes()
    with open(out / "last.pth", "r+b") as f:  # a torn write or a bad disk block
        f.truncate(len(good) // 2)
    assert (out / ckpt.checkpoint_name(8)).read_bytes() == good  # not truncated with it
    resumed = _trainer(cfg)
    with caplog.at_level("WARNING"):
        resumed.run()
    said = [r.getMessage() for r in caplog.records if "newest loadable" in r.getMessage()]
    assert len(said) == 1 and ckpt.checkpoint_name(8) in said[0] and "last.pth" in said[0]
    assert _same_weights(full, resumed)


def test_no_loadable_checkpoint_is_an_error_naming_the_files(tmp_path):
    cfg = _cfg(tmp_path)
    _trainer(cfg).run(stop_at=5)
    for path in tmp_path.glob("*.pth"):
        path.write_bytes(b"garbage")
    with pytest.raises(RuntimeError, match=r"no checkpoint .* can be loaded: last\.pth"):
        _trainer(cfg).run()


def test_architecture_change_is_refused_before_anything_is_written(tmp_path):
    cfg = _cfg(tmp_path)
    _trainer(cfg).run(stop_at=5)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    cfg.model.backbone.depth = 24
    with pytest.raises(ResumeConflictError, match=r"model\.backbone\.depth: 12 -> 24"):
        _trainer(cfg, allow_changes=True).run()  # never allowed
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_lr_change_is_refused_or_allowed_and_recorded(tmp_path):
    cfg = _cfg(tmp_path)
    _trainer(cfg).run(stop_at=5)
    config_yaml = (tmp_path / "config.yaml").read_text()
    cfg.train.lr = 5e-3
    cfg.train.log_every = 1  # free: never needs the flag
    with pytest.raises(ResumeConflictError, match=r"train\.lr: 0\.01 -> 0\.005.*--allow-changes"):
        _trainer(cfg).run()
    assert (tmp_path / "config.yaml").read_text() == config_yaml
    assert not (tmp_path / CHANGES_NAME).exists()

    trainer = _trainer(cfg, allow_changes=True)
    trainer.run()
    assert {g["initial_lr"] for g in trainer.optimizer.param_groups} == {5e-3}
    lines = [json.loads(ln) for ln in (tmp_path / CHANGES_NAME).read_text().splitlines()]
    assert [(r["iter"], r["changes"]) for r in lines] == [(4, {"train.lr": [0.01, 0.005]})]
    assert load_experiment(tmp_path / "config.yaml").train.lr == 5e-3


def test_each_evaluation_is_printed_as_it_comes(tmp_path, capsys):
    metrics = {"bbox/AP": 12.345, "segm/AP": 10.0, "bbox/AP50": 30.5}
    cfg = _cfg(tmp_path, eval_at=[0.5, 1.0])
    trainer = Trainer(cfg, ToyDetector(), toy_train_data(cfg, evaluate=lambda m, tag: metrics))
    assert any(isinstance(h, PeriodicEvaluation) for h in trainer.hooks)
    trainer.run()
    lines = [ln for ln in capsys.readouterr().out.splitlines() if ln.startswith("eval")]
    assert lines == ["eval iter 6 (50% of the schedule): APbox 12.35  APmask 10.00  AP50 30.50",
                     "eval iter 12 (100% of the schedule): APbox 12.35  APmask 10.00  AP50 30.50"]


ROOT = Path(__file__).resolve().parents[1]


def test_ctrl_c_from_the_command_line_exits_130_with_the_resume_command(tmp_path):
    out = tmp_path / "run"
    args = [str(ROOT / "params" / "smoke_shapes.yaml"), "--output-dir", str(out),
            "--set", f"data.cache_dir={tmp_path / 'data'}", "--set", "data.generated.num_train=8",
            "--set", "data.generated.num_val=0", "--set", "train.max_iters=400",
            "--set", "train.log_every=1", "--set", "train.checkpoint_every=1000"]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vitdet_lib.cli", "train", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while not (out / "metrics.jsonl").is_file() and time.time() < deadline:
        time.sleep(0.05)  # the first step is done: training is under way
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    message = err.strip().splitlines()[-1]  # one line, not a traceback
    step = int(re.search(r"stopped after iteration (\d+)", message).group(1))
    assert 1 <= step < 400 and "Traceback" not in err
    assert ckpt.load_checkpoint(out / "last.pth")["iteration"] == step
    assert f"to resume: vitdet-bench train {args[0]}" in message
    assert "--output-dir " + str(out) in message

    # a shorter schedule is a change: refused, then allowed with the flag and recorded
    shorter = [*args, "--set", f"train.max_iters={step + 2}"]
    assert cli.main(["train", *shorter]) == 2  # a refused change is bad input
    assert cli.main(["train", *shorter, "--allow-changes"]) == 0
    assert ckpt.load_checkpoint(out / "last.pth")["iteration"] == step + 2
    change = json.loads((out / CHANGES_NAME).read_text())
    assert change["changes"] == {"train.max_iters": [400, step + 2]}


# ----------------------------------------------------------------------------- pre-training


def _pretrainer(cfg, out, **kwargs):
    from pretrain_tiny import train_images

    from vitdet_lib.pretrain.engine import Pretrainer

    images, labels = train_images(256)
    torch.manual_seed(0)
    return Pretrainer(cfg, out, images=images[:96], labels=labels[:96], **kwargs)


def test_pretraining_stops_on_a_signal_and_resumes_exactly(tmp_path):
    from pretrain_tiny import one_thread_only, tiny_cfg

    cfg = tiny_cfg("mae", train={"epochs": 2})  # 3 steps per epoch
    with one_thread_only():
        straight = _pretrainer(cfg, tmp_path / "straight")
        straight.run()
        cut = _pretrainer(cfg, tmp_path / "cut")
        cut.register(_Signal(2, signal.SIGTERM))
        with pytest.raises(TrainingInterrupted) as info:
            cut.run()
        assert (info.value.iteration, info.value.checkpoint.name) == (2, "last.pth")
        assert ckpt.load_checkpoint(tmp_path / "cut" / "last.pth")["step"] == 2
        resumed = _pretrainer(cfg, tmp_path / "cut")
        assert resumed.run() == {"status": "finished", "step": 6}
    for (name, a), b in zip(straight.net.state_dict().items(), resumed.net.state_dict().values()):
        assert torch.equal(a, b), name


def test_pretraining_resume_with_another_encoder_is_refused_untouched(tmp_path):
    from pretrain_tiny import one_thread_only, tiny_cfg

    with one_thread_only():
        _pretrainer(tiny_cfg("mae"), tmp_path).run(stop_after_steps=1)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()}
    with pytest.raises(ResumeConflictError, match=r"encoder\.depth: 4 -> 2"):
        _pretrainer(tiny_cfg("mae", encoder={"depth": 2}), tmp_path)
    with pytest.raises(ResumeConflictError, match=r"train\.lr: .*--allow-changes"):
        _pretrainer(tiny_cfg("mae", train={"lr": 1e-4}), tmp_path)
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir() if p.is_file()} == before


def test_processes_started_under_blocked_signals_leave_them_to_the_main_process():
    from vitdet_lib.engine.loop import STOP_SIGNALS, signals_blocked

    probe = ("import signal; "
             "print(sorted(int(s) for s in signal.pthread_sigmask(signal.SIG_BLOCK, [])))")
    with signals_blocked():  # as loader workers are started
        out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                             check=True)
    blocked = set(json.loads(out.stdout))
    assert {int(s) for s in STOP_SIGNALS} <= blocked
    after = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    assert not set(STOP_SIGNALS) & set(after)  # the main process gets them again
