"""The complexity tool's counters: they must see attention, memory and every part's parameters."""
import json

import torch
import torch.nn.functional as F

from vitdet_lib import cli
from vitdet_lib.complexity import measure, param_breakdown
from vitdet_lib.config import AttentionLayout, DetectorConfig, ModelConfig, vit_config
from vitdet_lib.model import build_detector
from vitdet_lib.profiling import count_activations, count_flops, peak_memory


def tiny_detector(attention: str, image_size: int = 64):
    vit = vit_config("tiny", patch_size=8, embed_dim=32, depth=4, num_heads=2, pretrain_img_size=16,
                     attention=AttentionLayout(attention))
    det = DetectorConfig(num_classes=2, image_size=image_size, fpn_channels=16,
                         anchor_sizes=(8, 16, 32, 64, 128))
    return build_detector(ModelConfig(vit, det))


def test_attention_flops_are_counted_on_cpu():
    q = torch.randn(1, 2, 64, 16)
    # q @ k^T and attn @ v: 2 * (2 * 64 * 64 * 16) per head
    assert count_flops(lambda: F.scaled_dot_product_attention(q, q, q)) == 2 * 2 * 2 * 64 * 64 * 16


def test_peak_memory_tracks_step_allocations():
    def step():
        a = torch.empty(1_000_000)  # 4 MB, freed at return
        b = torch.empty(500_000)
        return a.sum() + b.sum()

    peak = peak_memory(step, torch.device("cpu"))
    assert 6_000_000 <= peak < 6_100_000


def test_global_costs_more_than_window_and_parts_add_up():
    win, glob = tiny_detector("window", 128), tiny_detector("global", 128)
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        f_win = count_flops(lambda: win.backbone(x))
        f_glob = count_flops(lambda: glob.backbone(x))
        assert count_activations(lambda: win.backbone(x)) > 0
    assert f_glob > f_win
    p = param_breakdown(win)
    assert p["total"] == p["backbone"] + p["adapter"] + p["fpn_or_neck"] + p["rpn"] + p["roi_heads"]


def test_measure_reports_memory_and_time():
    report = measure(tiny_detector("hybrid"), "ViT-tiny", 64, "hybrid", torch.device("cpu"),
                     iters=1)
    assert report.train_peak_mem_mb > 0 and report.train_step_s > 0 and report.infer_s_per_img > 0
    assert report.backbone_gmacs * 2 == report.backbone_gflops


def test_cli_writes_json(tmp_path, capsys):
    out = tmp_path / "c.json"
    assert cli.main(["complexity", "--size", "mini", "--image-size", "64", "--no-timing",
                     "--num-classes", "3", "--device", "cpu", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())["reports"]
    assert rows[0]["model"] == "ViT-mini" and rows[0]["params"]["total"] > 0
    assert "GMACs" in capsys.readouterr().out
