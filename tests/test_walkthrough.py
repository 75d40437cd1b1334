"""The teaching walkthrough: its plotting helpers (fast) and the notebook run headless."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch

from vitdet_lib import viz
from vitdet_lib.config import vit_config
from vitdet_lib.data import fashion_mnist_dir
from vitdet_lib.model import ViT, window_partition

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = REPO / "notebooks" / "walkthrough.ipynb"
FIGURES = {"01_patches", "02_windows", "03_lsj", "05_attention", "06_rel_pos", "07_pyramid",
           "08_cost", "09_predictions"}


def test_window_layout_counts_windows_and_padding():
    win, pad = viz.window_layout((20, 20), 8)
    assert win.shape == pad.shape == (24, 24)
    assert int(win.max()) + 1 == 9
    assert int(pad.sum()) == 24 * 24 - 20 * 20
    assert not pad[:20, :20].any() and pad[20:, :].all() and pad[:, 20:].all()
    assert (win[:8, :8] == 0).all() and (win[:8, 8:16] == 1).all()  # row-major window order
    win, pad = viz.window_layout((64, 64), 14)  # the paper's grid and window
    assert win.shape == (70, 70) and int(win.max()) + 1 == 25


@pytest.fixture
def hybrid_vit() -> ViT:
    # depth 8: blocks 1, 3, 5, 7 global, the others windowed; 80 px / 8 = 10x10 grid, r = 8 (padded)
    cfg = vit_config("mini", embed_dim=32, num_heads=2, drop_path_rate=0.0)
    vit = ViT(cfg, img_size=80).eval()
    with torch.no_grad():  # non-zero biases, so a wrong offset or a dropped mask would show
        vit.rel_pos_window_table.normal_(0, 1.0)
        vit.rel_pos_global_table.normal_(0, 1.0)
    return vit


def test_attention_probs_reproduce_each_blocks_sdpa_output(hybrid_vit):
    vit = hybrid_vit
    captured = viz.capture_block_inputs(vit, torch.randn(3, 80, 80))
    assert sorted(captured) == list(range(8))
    with torch.no_grad():
        for i, blk in enumerate(vit.blocks):
            x, mask = captured[i]
            y = blk.norm1(x)
            tokens = (window_partition(y, blk.window_size)[0] if blk.window_size
                      else y.reshape(1, -1, 32))
            probs = viz.attention_probs(blk.attn, tokens, mask)
            b, n, c = tokens.shape
            v = blk.attn.qkv(tokens).view(b, n, 3, 2, c // 2)[:, :, 2].transpose(1, 2)
            manual = blk.attn.proj((probs @ v).transpose(1, 2).reshape(b, n, c))
            torch.testing.assert_close(manual, blk.attn(tokens, mask), atol=1e-5, rtol=1e-4)


def test_attention_map_stays_in_the_query_window_and_sums_to_one(hybrid_vit):
    vit = hybrid_vit
    captured = viz.capture_block_inputs(vit, torch.randn(3, 80, 80))
    windowed = viz.attention_map(vit, captured, 0, (9, 9))  # window (1, 1): rows/cols 8..9 real
    assert windowed.shape == (2, 10, 10)
    assert windowed[:, :8].abs().sum() == 0 and windowed[:, :, :8].abs().sum() == 0
    # padded keys are masked, so the 2x2 real part of the corner window carries all the weight
    torch.testing.assert_close(windowed.sum((1, 2)), torch.ones(2))
    global_map = viz.attention_map(vit, captured, 1, (0, 0))
    torch.testing.assert_close(global_map.sum((1, 2)), torch.ones(2))
    assert (global_map > 0).all()


def test_measured_cost_global_grows_faster_than_windowed():
    df = viz.measure_attention_cost([8, 16], window_size=4, embed_dim=16, num_heads=2, time_iters=1)
    flops = df.pivot(index="grid", columns="layout", values="gflops")
    assert (flops.loc[16, "global"] / flops.loc[8, "global"]
            > flops.loc[16, "window"] / flops.loc[8, "window"])
    assert (df["seconds"] > 0).all()


def test_explore_headless_renders_once_and_saves(tmp_path, monkeypatch):
    calls = []

    def plot(grid: int, window_size: int):
        calls.append((grid, window_size))
        return viz.plot_window_partition(grid, window_size)

    monkeypatch.setattr("IPython.display.display", lambda *a, **k: None)
    viz.explore(plot, {"grid": viz.Slider(4, 64, 1, 12), "window_size": viz.Slider(2, 16, 1, 5)},
                interactive=False, save_to=tmp_path, name="windows")
    assert calls == [(12, 5)]
    assert (tmp_path / "windows.png").stat().st_size > 1000


@pytest.mark.slow  # a papermill kernel running the whole notebook
@pytest.mark.skipif(not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (the walkthrough shows real samples)")
def test_notebook_runs_headless_with_short_run(tmp_path):
    papermill = pytest.importorskip("papermill")
    figures = tmp_path / "figures"
    papermill.execute_notebook(
        str(NOTEBOOK), str(tmp_path / "walkthrough_out.ipynb"), kernel_name="python3",
        cwd=str(tmp_path), progress_bar=False,
        # checkpoint None: the in-place training path, whether or not a detector is shipped
        parameters={"short_run": True, "interactive": False, "data_dir": str(tmp_path / "data"),
                    "work_dir": str(tmp_path / "run"), "save_figures_to": str(figures),
                    "checkpoint": None},
    )
    assert {p.stem for p in figures.glob("*.png")} == FIGURES


@pytest.mark.slow
@pytest.mark.skipif(not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
                    reason="Fashion-MNIST not installed (the walkthrough shows real samples)")
def test_notebook_dissects_an_exported_detector_without_training(tmp_path):
    """The shipped-detector path: an fp16 export (as the cpu study ships it) is loaded,
    evaluated on its own validation scenes, and shown; nothing is trained."""
    papermill = pytest.importorskip("papermill")
    from vitdet_lib.checkpoint.export import export_detector
    from vitdet_lib.engine import train
    from vitdet_lib.experiment import load_experiment

    cfg = load_experiment({
        "model": {"backbone": {"patch_size": 8, "embed_dim": 32, "depth": 8, "num_heads": 2,
                               "pretrain_img_size": 64},
                  "detector": {"num_classes": 10, "image_size": 96, "fpn_channels": 16,
                               "detections_per_img": 10}},
        "data": {"generated": {"kind": "fashion", "num_train": 8, "num_val": 4, "image_size": 96},
                 "cache_dir": str(tmp_path / "data")},
        "train": {"max_iters": 2, "batch_size": 2, "batch_per_device": 2, "eval_at": [],
                  "num_workers": 0, "device": "cpu"},
        "output_dir": str(tmp_path / "trained")})
    train(cfg)
    export_detector(tmp_path / "trained" / "last.pth", tmp_path / "detector.pth")
    out = tmp_path / "walkthrough_out.ipynb"
    papermill.execute_notebook(
        str(NOTEBOOK), str(out), kernel_name="python3", cwd=str(tmp_path), progress_bar=False,
        parameters={"short_run": True, "interactive": False, "data_dir": str(tmp_path / "data"),
                    "work_dir": str(tmp_path / "run"), "checkpoint": str(tmp_path / "detector.pth"),
                    "save_figures_to": str(tmp_path / "figures")})
    text = out.read_text()
    assert "validation scenes (4 images): APbox" in text
    assert not (tmp_path / "run" / "last.pth").exists()  # nothing was trained
    assert {p.stem for p in (tmp_path / "figures").glob("*.png")} == FIGURES
