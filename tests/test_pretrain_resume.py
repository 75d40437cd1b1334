"""Pre-training resumes exactly, runs under 2-process DDP, drives from the CLI, and its
checkpoints load into the detection backbone through the official-layout converters."""
import json

import pytest
import torch
from gloo import run_gloo
from pretrain_tiny import METHODS, one_thread, tiny_cfg, train_images  # noqa: F401 (fixture)

from vitdet_lib.checkpoint import InitConfig, initialize_backbone
from vitdet_lib.config import vit_config
from vitdet_lib.engine import NonFiniteLossError
from vitdet_lib.engine import distributed as du
from vitdet_lib.model.vit import ViT
from vitdet_lib.pretrain.engine import Pretrainer, pretrain


def _final_state(out):
    obj = torch.load(out / "last.pth", map_location="cpu", weights_only=True)
    return obj["state_dict" if "state_dict" in obj else "model"], obj


def test_resume_mid_epoch_is_exact(tmp_path):
    """MAE draws masks, crops and flips from the RNG: a resume that lost a state would differ."""
    images, labels = train_images(256)
    images, labels = images[:96], labels[:96]
    cfg = tiny_cfg("mae", train={"epochs": 2, "save_epochs": [1, 2]})  # 3 steps per epoch
    torch.manual_seed(0)
    pretrain(cfg, tmp_path / "straight", images=images, labels=labels)
    torch.manual_seed(0)
    first = pretrain(cfg, tmp_path / "resumed", images=images, labels=labels, stop_after_steps=4)
    assert first == {"status": "stopped", "step": 4}
    torch.manual_seed(123)  # a different process state before resuming must not matter
    second = pretrain(cfg, tmp_path / "resumed", images=images, labels=labels)
    assert second == {"status": "finished", "step": 6}
    straight, _ = _final_state(tmp_path / "straight")
    resumed, _ = _final_state(tmp_path / "resumed")
    for key, value in straight.items():
        assert torch.equal(value, resumed[key]), key
    logs = [json.loads(ln) for ln in (tmp_path / "resumed" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in logs if r["type"] == "step"] == list(range(1, 7))
    # the second process started at step 4 (a run that ignored last.pth would start at 0)
    assert [r["step"] for r in logs if r["type"] == "start"] == [0, 4]
    ref = [json.loads(ln) for ln in (tmp_path / "straight" / "log.jsonl").read_text().splitlines()]
    assert ([r["loss"] for r in logs if r["type"] == "step"]
            == [r["loss"] for r in ref if r["type"] == "step"])


def test_diverging_run_stops_and_keeps_the_last_good_checkpoint(tmp_path):
    """lr 1e30: Adam's first step moves every weight by ~1e30, the second forward overflows."""
    images, labels = train_images(256)
    cfg = tiny_cfg("mae", train={"epochs": 2, "lr": 1e30, "warmup_epochs": 0.0,
                                 "checkpoint_every": 1})
    with pytest.raises(NonFiniteLossError, match="non-finite loss at iteration 2"):
        pretrain(cfg, tmp_path, images=images[:96], labels=labels[:96])
    state, obj = _final_state(tmp_path)
    assert obj["step"] == 1
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())



def _worker(rank, out, method="mocov3", batch_per_device=16):
    info = du.init_distributed("cpu")
    images, labels = train_images(256)
    # batch 32 = 2 ranks x 16 (MoCo v3 refuses accumulation) or 2 ranks x 2 x 8 (MAE)
    cfg = tiny_cfg(method, train={"epochs": 1, "batch_per_device": batch_per_device})
    trainer = Pretrainer(cfg, out, info=info, images=images[:64], labels=labels[:64])
    trainer.run()
    params = {n: p.detach() for n, p in trainer.net.named_parameters()}
    torch.save(params, out / f"params_rank{rank}.pt")


@pytest.mark.parametrize("method, batch_per_device, accumulation", [("mocov3", 16, 1),
                                                                   ("mae", 8, 2)])
def test_two_process_ddp_with_accumulation(tmp_path, method, batch_per_device, accumulation):
    """MoCo v3 gathers keys across ranks for its negatives and has BatchNorm in its heads;
    MAE accumulates two micro-batches per rank (MoCo v3 may not: its negatives would shrink)."""
    out = tmp_path / "ddp"
    run_gloo(_worker, tmp_path, out, method, batch_per_device)
    state, obj = _final_state(out)
    assert obj["step"] == 2 and obj["world_size"] == 2 and len(obj["rng"]) == 2
    logs = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    start = next(r for r in logs if r["type"] == "start")
    assert start["world_size"] == 2 and start["accumulation"] == accumulation
    assert all(torch.isfinite(v).all() for v in state.values() if v.is_floating_point())
    rank0, rank1 = (torch.load(out / f"params_rank{r}.pt", weights_only=True) for r in (0, 1))
    for name, value in rank0.items():  # DDP kept the replicas (incl. the EMA encoder) equal
        assert torch.equal(value, rank1[name]), name


def test_cli_pretrain_and_eval(tmp_path, capsys):
    from vitdet_lib.cli import main

    out = tmp_path / "cli"
    tiny = ["--set", "encoder.embed_dim=64", "--set", "encoder.depth=4",
            "--set", "encoder.num_heads=2", "--set", "encoder.img_size=32",
            "--set", "data.num_images=128", "--set", "train.batch_size=32",
            "--set", "train.batch_per_device=32", "--set", "train.warmup_epochs=0.5",
            "--set", "train.save_epochs=[1]", "--set", "train.device=cpu",
            "--set", "mae.decoder_embed_dim=32", "--set", "eval.bank_images=100",
            "--set", "eval.test_images=50", "--set", "eval.probe_epochs=2"]
    assert main(["pretrain", "--method", "mae", "--epochs", "1", "--out", str(out), *tiny]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert set(result["trained"]) == {"knn_cls", "knn_mean", "probe_cls", "probe_mean"}
    assert set(result["random_init"]) == set(result["trained"])
    assert (out / "mae_reconstruction.png").is_file() and (out / "checkpoint-1.pth").is_file()
    capsys.readouterr()
    assert main(["pretrain-eval", "--checkpoint", str(out / "checkpoint-1.pth"),
                 "--out", str(tmp_path / "ev")]) == 0
    again = json.loads((tmp_path / "ev" / "eval.json").read_text())
    assert again["trained"] == result["trained"]  # the same weights, the same numbers


@pytest.mark.parametrize("method", METHODS)
def test_checkpoints_load_into_the_detection_backbone(tmp_path, method):
    images, labels = train_images(256)
    cfg = tiny_cfg(method, train={"epochs": 1})
    pretrain(cfg, tmp_path, images=images[:32], labels=labels[:32])
    enc = cfg.encoder.vit()
    vit_cfg = vit_config("mini", embed_dim=enc.embed_dim, depth=enc.depth, num_heads=enc.num_heads,
                         pretrain_img_size=enc.pretrain_img_size,
                         layer_scale_init=0.1 if method == "beit" else 0.0)
    vit = ViT(vit_cfg, img_size=64)
    report = initialize_backbone(vit, InitConfig(kind=method,
                                                 checkpoint=str(tmp_path / "last.pth")))
    state = torch.load(tmp_path / "last.pth", map_location="cpu", weights_only=True)
    prefix = "module.base_encoder." if method == "mocov3" else ""
    weights = state["state_dict" if method == "mocov3" else "model"]
    torch.testing.assert_close(vit.blocks[1].mlp.fc2.weight,
                               weights[prefix + "blocks.1.mlp.fc2.weight"])
    assert report.loaded
