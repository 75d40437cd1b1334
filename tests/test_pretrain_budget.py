"""The pre-training budget rule, the throughput measurement and the lr check (tiny runs)."""
import importlib.util
import json
from pathlib import Path

import pytest
from pretrain_tiny import one_thread, tiny_cfg, train_images  # noqa: F401 (autouse fixture)

from vitdet_lib import cli
from vitdet_lib.config import ConfigError
from vitdet_lib.pretrain.budget import PAPER_EPOCHS, images_per_second, split_budget
from vitdet_lib.pretrain.calibrate import best_lr, lr_check, measure_throughput
from vitdet_lib.pretrain.config import Method

ROOT = Path(__file__).resolve().parents[1]
TINY_SET = ["encoder.embed_dim=64", "encoder.depth=4", "encoder.num_heads=2",
            "encoder.img_size=32", "train.batch_size=32", "train.batch_per_device=32",
            "train.device=cpu", "mae.decoder_embed_dim=32", "mae.decoder_num_heads=2"]


def test_paper_epochs_are_data_with_sources():
    assert {m: s.epochs for m, s in PAPER_EPOCHS.items()} == {
        Method.MAE: 1600, Method.BEIT: 800, Method.MOCOV3: 300, Method.SUPERVISED: 300}
    assert all(s.source for s in PAPER_EPOCHS.values())


def test_equal_compute_gives_each_method_the_same_time():
    shares = split_budget({"mae": 400.0, "mocov3": 100.0}, 1000.0, 1000, "equal_compute")
    assert shares[Method.MAE].seconds == pytest.approx(500.0)
    assert shares[Method.MOCOV3].seconds == pytest.approx(500.0)
    assert shares[Method.MAE].epochs == pytest.approx(200.0)  # 500 s * 400 img/s / 1000 img
    assert shares[Method.MOCOV3].epochs == pytest.approx(50.0)


def test_paper_proportional_keeps_the_papers_ratios_within_the_budget():
    shares = split_budget({"mae": 400.0, "mocov3": 100.0}, 1000.0, 1000, "paper_proportional")
    # one paper unit costs 1600 * 1000 / 400 + 300 * 1000 / 100 = 7000 s; the budget is 1/7
    assert shares[Method.MAE].epochs == pytest.approx(1600 / 7)
    assert shares[Method.MOCOV3].epochs == pytest.approx(300 / 7)
    assert sum(s.seconds for s in shares.values()) == pytest.approx(1000.0)


def test_budget_errors_and_step_seconds():
    assert images_per_second(0.5, 64) == 128.0
    with pytest.raises(ConfigError, match="budget rule 'fastest'"):
        split_budget({"mae": 1.0}, 10.0, 10, "fastest")
    with pytest.raises(ConfigError, match="unknown method 'dino'"):
        split_budget({"dino": 1.0}, 10.0, 10)
    with pytest.raises(ConfigError, match="mae: images_per_s must be positive"):
        split_budget({"mae": 0.0}, 10.0, 10)


def test_measure_throughput_times_the_real_step():
    images, labels = train_images(256)
    result = measure_throughput(tiny_cfg("beit"), images[:96], labels[:96], steps=2, warmup=1)
    assert len(result["step_s_all"]) == 2 and result["batch_size"] == 32
    assert result["images_per_s"] == pytest.approx(32 / result["step_s_median"])


def test_lr_check_records_the_loss_drop_per_lr():
    images, labels = train_images(256)
    result = lr_check(tiny_cfg("mae"), [1e-9, 3e-3, 1e8], images[:128], labels[:128],
                      steps=12, window=3)
    tiny, good, broken = result["runs"]
    # same initial weights and batches: the first loss (before any update) is the same
    assert tiny["losses"][0] == good["losses"][0] and len(good["losses"]) == 12
    assert good["drop"] > 0.05 and good["drop"] > tiny["drop"] + 0.05
    assert good["drop"] == pytest.approx(sum(good["losses"][:3]) / 3 -
                                         sum(good["losses"][-3:]) / 3)
    assert broken["diverged"] and "non-finite" in broken["error"] and not good["diverged"]
    assert result["best_lr"] == 3e-3


def test_best_lr_is_the_lowest_final_loss_not_the_largest_drop():
    # a large lr lowers the loss within the first window already, so its "drop" is smaller
    # although it ends lower (as MAE did in our check at width 128)
    runs = [{"lr": 3e-4, "loss_first": 1.74, "loss_last": 0.689, "drop": 1.05, "diverged": False},
            {"lr": 3e-3, "loss_first": 1.46, "loss_last": 0.659, "drop": 0.80, "diverged": False},
            {"lr": 1e8, "loss_first": 9.0, "loss_last": 0.1, "drop": 8.9, "diverged": True}]
    assert best_lr(runs) == 3e-3
    assert best_lr([runs[2]]) is None


def test_lr_check_cli_and_throughput_script(tmp_path):
    out = tmp_path / "lr.json"
    args = ["pretrain-lr-check", "--method", "mae", "--lrs", "1e-3", "2e-3", "--steps", "4",
            "--window", "2", "--out", str(out)]
    for item in [*TINY_SET, "data.num_images=64"]:
        args += ["--set", item]
    assert cli.main(args) == 0
    record = json.loads(out.read_text())
    assert [r["lr"] for r in record["runs"]] == [1e-3, 2e-3] and record["best_lr"] in (1e-3, 2e-3)
    spec = importlib.util.spec_from_file_location("pt", ROOT / "benchmarks/pretrain_throughput.py")
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    bench = tmp_path / "bench.json"
    argv = ["--methods", "mae", "mocov3", "--steps", "1", "--warmup", "1", "--budget-hours", "1",
            "--out", str(bench)]
    for item in [*TINY_SET, "mocov3.dim=32", "mocov3.mlp_dim=64"]:
        argv += ["--set", item]
    assert script.main(argv) == 0
    record = json.loads(bench.read_text())
    ips = {m: r["images_per_s"] for m, r in record["methods"].items()}
    epochs = record["budget"]["epochs"]
    # equal compute: epochs in the ratio of the throughputs
    assert epochs["mae"] / epochs["mocov3"] == pytest.approx(ips["mae"] / ips["mocov3"])
