"""The training loop on the toy detector: accumulation, exact resume, divergence, records."""
import json

import pytest
import torch
from engine_toy import ToyDetector, toy_train_data
from torch import nn

from vitdet_lib.config import ConfigError
from vitdet_lib.engine import checkpoint as ckpt
from vitdet_lib.engine.trainer import NonFiniteLossError, Trainer
from vitdet_lib.experiment import load_experiment


def _cfg(out, **train):
    base = {"batch_size": 4, "batch_per_device": 2, "epochs": 1.5, "lr": 1e-2, "eval_at": [1.0],
            "checkpoint_every": 4, "log_every": 2, "num_workers": 0, "device": "cpu"}
    return load_experiment({"data": {"generated": {}}, "output_dir": str(out),
                            "train": {**base, **train}})


def _trainer(cfg, evaluate=None, init_seed=123, **model_kwargs):
    torch.manual_seed(init_seed)  # the initial weights: the same for every trainer by default
    return Trainer(cfg, ToyDetector(**model_kwargs), toy_train_data(cfg, evaluate=evaluate))


def _jsonl(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_accumulation_matches_one_big_batch(tmp_path):
    # 4 images per step either as one pass or as 2 passes of 2 (no BN, no dropout)
    one = _trainer(_cfg(tmp_path / "one", batch_per_device=4), dropout=0.0)
    two = _trainer(_cfg(tmp_path / "two", batch_per_device=2), dropout=0.0)
    assert (one.accum, two.accum) == (1, 2)
    one.run()
    two.run()
    for (name, a), b in zip(one.model.state_dict().items(), two.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


def test_batch_must_split_into_whole_accumulation_steps(tmp_path):
    cfg = _cfg(tmp_path, batch_size=6, batch_per_device=3)
    cfg.train.batch_per_device = 4  # bypass the load-time check: the trainer checks too
    with pytest.raises(ConfigError, match="not a multiple"):
        _trainer(cfg)


def test_killed_and_resumed_run_equals_uninterrupted(tmp_path):
    evaluate = lambda model, tag: {"bbox/AP": float(model.cls_head.weight.sum())}
    # 32 images / batch 4 = 8 steps per epoch: 12 steps, checkpoints at 4, 8, 12
    full = _trainer(_cfg(tmp_path / "full", eval_at=[0.5, 1.0]), evaluate)
    full.run()

    cfg = _cfg(tmp_path / "cut", eval_at=[0.5, 1.0])
    assert _trainer(cfg, evaluate).run(stop_at=7) == {"stopped_at": 7}  # "killed" after step 7
    assert ckpt.load_checkpoint(tmp_path / "cut" / "last.pth")["iteration"] == 4
    before = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    # a new process: other initial weights and another global RNG state than the first run's,
    # so a run that ignored last.pth (and restarted from train.seed) could not match
    resumed = _trainer(cfg, evaluate, init_seed=999)
    assert not torch.equal(resumed.model.cls_head.weight, full.model.cls_head.weight)
    torch.manual_seed(4321)
    summary = resumed.run()
    assert resumed.model.train_calls == (12 - 4) * 2  # steps 5-12 only, 2 micro-batches each

    for (name, a), b in zip(full.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name  # bitwise on CPU
    assert str(full.optimizer.state_dict()) == str(resumed.optimizer.state_dict())
    timeless = lambda records: [{k: v for k, v in r.items() if k != "eval_time_s"}
                                for r in records]
    assert summary["iterations"] == 12
    assert timeless(summary["eval_history"]) == timeless(full.eval_history)
    lines = (tmp_path / "cut" / "metrics.jsonl").read_text().splitlines()
    iters = [json.loads(line)["iter"] for line in lines]
    assert iters == [1, 2, 4, 6, 8, 10, 12]  # steps 5-7 logged once, not twice
    # the first process's records of steps 1-4 are kept as written (their timings included)
    assert lines[:3] == [line for line in before if json.loads(line)["iter"] <= 4]
    assert [r["iter"] for r in _jsonl(tmp_path / "cut" / "eval.jsonl")] == [6, 12]
    # a rerun of a finished run trains nothing and rewrites the same summary
    rerun = _trainer(cfg, evaluate, init_seed=7)
    assert timeless(rerun.run()["eval_history"]) == timeless(full.eval_history)
    assert rerun.model.train_calls == 0


def test_evaluation_does_not_perturb_training(tmp_path):
    def noisy_eval(model, tag):
        torch.rand(100), __import__("random").random()  # an evaluator that draws random numbers
        return {"bbox/AP": 0.0}

    a = _trainer(_cfg(tmp_path / "a", eval_at=[0.25, 0.5, 1.0]), noisy_eval)
    b = _trainer(_cfg(tmp_path / "b", eval_at=[1.0]))
    a.run()
    b.run()
    assert all(torch.equal(x, y) for x, y in zip(a.model.parameters(), b.model.parameters()))
    assert [r["iter"] for r in a.eval_history] == [3, 6, 12]


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    # batch 4 = 2 x 2: the 11th forward is the first micro-batch of step 6
    trainer = _trainer(_cfg(tmp_path, checkpoint_every=2), nan_at_call=11)
    with pytest.raises(NonFiniteLossError, match=r"iteration 6 .*loss_cls=nan"):
        trainer.run()
    assert [it for it, _ in ckpt.periodic_checkpoints(tmp_path)] == [2, 4]
    state = ckpt.load_checkpoint(tmp_path / "last.pth")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_metrics_records(tmp_path):
    trainer = _trainer(_cfg(tmp_path, epochs=1.0, log_every=3, clip_grad=0.01))
    summary = trainer.run()
    lines = _jsonl(tmp_path / "metrics.jsonl")
    assert [r["iter"] for r in lines] == [1, 3, 6, 8]
    assert {"iter", "epoch", "loss_box", "loss_cls", "loss", "lr", "grad_norm", "time",
            "data_time", "max_mem_mb", "step_mem_mb"} <= set(lines[0])
    assert lines[0]["step_mem_mb"] > 0 and all(r["step_mem_mb"] == lines[0]["step_mem_mb"]
                                               for r in lines)
    assert lines[-1]["epoch"] == 1.0
    assert lines[0]["grad_norm"] > 0.01  # logged before clipping
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["status"] == "finished" and saved["iterations"] == 8
    assert saved["step_mem_mb"] == lines[0]["step_mem_mb"]
    assert saved == json.loads(json.dumps(summary))
    assert load_experiment(tmp_path / "config.yaml") == trainer.cfg


def test_fp16_on_cpu_is_refused_before_any_step(tmp_path):
    cfg = _cfg(tmp_path, amp="fp16")
    with pytest.raises(ConfigError, match="fp16 needs CUDA"):
        _trainer(cfg).run()
    assert not (tmp_path / "metrics.jsonl").exists() and not (tmp_path / "last.pth").exists()


class _InfiniteGradient(ToyDetector):
    """Finite losses, but on training forward ``bad_call`` the classifier's gradient is inf:
    what an fp32 overflow in backward looks like to the loop."""

    def __init__(self, bad_call: int) -> None:
        super().__init__(dropout=0.0)
        self.bad_call = bad_call

    def forward(self, images, targets=None):
        out = super().forward(images, targets)
        if self.training and self.train_calls == self.bad_call:
            self.cls_head.weight.register_hook(lambda g: torch.full_like(g, float("inf")))
        return out


def test_non_finite_gradient_norm_stops_and_keeps_last_good_checkpoint(tmp_path):
    # batch 4 = 2 x 2: forward 9 is the first micro-batch of step 5
    trainer = Trainer(_cfg(tmp_path, checkpoint_every=2, log_every=1), _InfiniteGradient(9),
                      toy_train_data(_cfg(tmp_path)))
    with pytest.raises(NonFiniteLossError, match=r"non-finite gradient norm at iteration 5"):
        trainer.run()
    assert [it for it, _ in ckpt.periodic_checkpoints(tmp_path)] == [2, 4]
    state = ckpt.load_checkpoint(tmp_path / "last.pth")
    assert state["iteration"] == 4
    assert all(torch.isfinite(v).all() for v in state["model"].values())
    assert [r["iter"] for r in _jsonl(tmp_path / "metrics.jsonl")] == [1, 2, 3, 4]


class _CorruptsUnusedWeight(ToyDetector):
    """A parameter outside the loss (no gradient, so neither the loss nor the gradient-norm
    check can see it) turns NaN on training forward ``bad_call``."""

    def __init__(self, bad_call: int) -> None:
        super().__init__(dropout=0.0)
        self.bad_call = bad_call
        self.unused = nn.Parameter(torch.zeros(3))

    def forward(self, images, targets=None):
        if self.training and self.train_calls + 1 == self.bad_call:
            with torch.no_grad():
                self.unused.fill_(float("nan"))
        return super().forward(images, targets)


def test_non_finite_weights_never_replace_the_last_good_checkpoint(tmp_path):
    cfg = _cfg(tmp_path, checkpoint_every=2)
    trainer = Trainer(cfg, _CorruptsUnusedWeight(bad_call=7), toy_train_data(cfg))  # step 4
    with pytest.raises(NonFiniteLossError, match=r"non-finite parameters after iteration 4"):
        trainer.run()
    assert [it for it, _ in ckpt.periodic_checkpoints(tmp_path)] == [2]
    state = ckpt.load_checkpoint(tmp_path / "last.pth")
    assert state["iteration"] == 2 and torch.equal(state["model"]["unused"], torch.zeros(3))
