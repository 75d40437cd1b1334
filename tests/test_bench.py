"""The benchmark command runs end to end on a tiny config and writes its record; the fused
attention with a trainable bias matches plain attention (values and all four gradients)."""
from __future__ import annotations

import json
import math
import subprocess
from pathlib import Path

import pytest
import torch

import vitdet_lib.model.attention as attention_mod
from vitdet_lib.bench import fit_exponent
from vitdet_lib.cli import main
from vitdet_lib.model.attention import biased_attention


def test_fit_exponent_recovers_power_laws():
    tokens = [256.0, 1024.0, 2304.0, 4096.0]
    assert fit_exponent(tokens, [3e-6 * t**2 for t in tokens]) == pytest.approx(2.0)
    assert fit_exponent(tokens, [0.5 * t + 0.0 * t for t in tokens]) == pytest.approx(1.0)
    mixed = [1e-3 * t + 1e-7 * t**2 for t in tokens]  # linear part dominating: between 1 and 2
    assert 1.0 < fit_exponent(tokens, mixed) < 2.0
    assert math.isnan(fit_exponent([4.0], [1.0]))


@pytest.mark.parametrize("bias_shape, batch",
                         [((1, 2, 12, 12), 3), ((3, 2, 12, 12), 3), ((3, 1, 1, 12), 3)])
def test_biased_attention_matches_math_with_bias_grad(monkeypatch, bias_shape, batch):
    monkeypatch.setattr(attention_mod, "_CHUNK_ELEMENTS", 100)  # several query chunks
    gen = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(batch, 2, 12, 4, generator=gen, dtype=torch.float64, requires_grad=True)
               for _ in range(3))
    bias = torch.randn(*bias_shape, generator=gen, dtype=torch.float64)
    bias[..., -2:] = float("-inf")  # masked keys, as window padding
    bias.requires_grad_(True)
    out = biased_attention(q, k, v, bias)
    ref = torch.softmax(q @ k.transpose(-2, -1) / 2.0 + bias, -1) @ v
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v, bias), grad)
    want = torch.autograd.grad(ref, (q, k, v, bias), grad)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    for g, w in zip(got, want):
        torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6)


def test_bench_command_writes_record(tmp_path):
    out = tmp_path / "bench.json"
    argv = ["bench", "--size", "mini", "--layouts", "window", "hybrid", "global",
            "--image-sizes", "64", "128", "--train-sizes", "64", "128", "--iters", "1",
            "--detector-image-size", "64", "--detector-layouts", "hybrid", "global_checkpoint",
            "--detector-set", "box_batch_size_per_image=32", "detections_per_img=5",
            "rpn_post_nms_top_n_train=50", "rpn_post_nms_top_n_test=20",
            "--data-images", "4", "--data-source-size", "64",
            "--data-workers", "0", "--threads", "1", "--device", "cpu", "--probe-size", "256",
            "--json", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    for key in ("command", "env", "threads", "probe_gflops_s", "backbone", "detector", "data",
                "flops_convention", "load_avg_start"):
        assert key in rec, key
    assert rec["threads"] == 1 and rec["env"]["device"].startswith("CPU")
    head = subprocess.run(["git", "rev-parse", "--verify", "HEAD"], cwd=Path(__file__).parent,
                          capture_output=True, text=True, check=False)
    assert rec["env"]["git_commit"] == (head.stdout.strip() if head.returncode == 0 else None)
    rows = rec["backbone"]["rows"]
    assert {(r["layout"], r["image_size"]) for r in rows} == {
        (lay, s) for lay in ("window", "hybrid", "global") for s in (64, 128)}
    for r in rows:
        for key in ("fwd_s", "fwd_gflops", "fwd_gmacs", "fwd_peak_mb", "fwd_efficiency",
                    "train_s", "train_gflops", "train_peak_mb", "train_efficiency",
                    "probe_gflops_s"):
            assert r[key] > 0, (r["layout"], r["image_size"], key)
    fits = rec["backbone"]["exponent_vs_tokens"]
    assert set(fits) == {"window", "hybrid", "global"}
    assert fits["global"]["fwd_gflops"] > fits["window"]["fwd_gflops"]  # FLOPs are deterministic
    dets = rec["detector"]["rows"]
    assert [d["layout"] for d in dets] == ["hybrid", "global_checkpoint"]
    for det in dets:
        assert det["train_s"] > 0 and det["train_peak_mb"] > 0 and det["infer_images_s"] > 0
    assert rec["detector"]["ratios_to_hybrid"][0]["train_s"] == 1.0
    assert rec["device_peak_tflops"] is None  # CPU: no data-sheet peak, no utilisation column
    assert "fwd_device_utilisation" not in rows[0]
    assert rec["data"]["images_s"] > 0 and rec["data"]["workers"] == 0


@pytest.mark.parametrize("grid, batch", [((4, 4), 1), ((3, 5), 2)])
def test_grid_bias_attention_matches_dense_bias(monkeypatch, grid, batch):
    """The factored global bias (chunks of query grid-rows, gradient added into the factored
    rows) gives the same output and gradients as plain attention with the dense bias."""
    from vitdet_lib.model.pos import GridBias, rel_pos_bias

    monkeypatch.setattr(attention_mod, "_CHUNK_ELEMENTS", 40)  # one query grid-row per chunk
    h, w = grid
    heads, n = 2, h * w
    gen = torch.Generator().manual_seed(1)
    q, k, v = (torch.randn(batch, heads, n, 4, generator=gen, dtype=torch.float64,
                           requires_grad=True)
               for _ in range(3))
    table = torch.randn((2 * max(h, w) - 1) ** 2, heads, generator=gen, dtype=torch.float64,
                        requires_grad=True)
    out = biased_attention(q, k, v, GridBias.from_table(table, grid))
    ref = torch.softmax(q @ k.transpose(-2, -1) / 2.0 + rel_pos_bias(table, grid)[None], -1) @ v
    grad = torch.randn(out.shape, generator=gen, dtype=torch.float64)
    got = torch.autograd.grad(out, (q, k, v, table), grad)
    want = torch.autograd.grad(ref, (q, k, v, table), grad)
    torch.testing.assert_close(out, ref, rtol=1e-4, atol=1e-6)
    for g, w_ in zip(got, want):
        torch.testing.assert_close(g, w_, rtol=1e-4, atol=1e-6)
    with pytest.raises(ValueError, match="GridBias of a"):
        biased_attention(q[:, :, :-1], k, v, GridBias.from_table(table, grid))


def test_device_peak_lookup_prefers_the_specific_name(monkeypatch):
    from vitdet_lib import bench

    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H100 PCIe")
    assert bench.device_peak_tflops(torch.device("cuda")) == 756.0
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "NVIDIA H200")
    assert bench.device_peak_tflops(torch.device("cuda")) == 989.4
    monkeypatch.setattr(torch.cuda, "get_device_name", lambda device=None: "Some Future GPU")
    assert bench.device_peak_tflops(torch.device("cuda")) is None
    assert bench.device_peak_tflops(torch.device("cpu")) is None


def test_oom_rows_are_recorded_not_fatal(monkeypatch):
    """A layout that does not fit (the paper's global row on 32 GB) becomes an 'oom' row."""
    from vitdet_lib import bench

    def boom(*_a, **_k):
        raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(bench, "_bench_detector_layout", boom)
    import argparse
    args = argparse.Namespace(detector_layouts=["global"], detector_image_size=64, size="mini",
                              detector_set=[])
    out = bench.bench_detector(args, torch.device("cpu"), log=lambda s: None)
    assert out["rows"][0]["oom"].startswith("CUDA out of memory")
    monkeypatch.setattr(bench, "_bench_detector_layout",
                        lambda *a, **k: (_ for _ in ()).throw(RuntimeError("shape mismatch")))
    with pytest.raises(RuntimeError, match="shape mismatch"):
        bench.bench_detector(args, torch.device("cpu"), log=lambda s: None)


def test_bench_memory_sees_activation_checkpointing(tmp_path):
    """Peak memory is measured outside the FLOP counter, whose module tracking would keep the
    activations that checkpointing frees (the two layouts would then read the same)."""
    out = tmp_path / "bench.json"
    assert main(["bench", "--parts", "backbone", "--size", "mini",
                 "--layouts", "global", "global_checkpoint",
                 "--image-sizes", "128", "--train-sizes", "128", "--threads", "1",
                 "--device", "cpu", "--probe-size", "128",
                 "--json", str(out)]) == 0
    rows = {r["layout"]: r for r in json.loads(out.read_text())["backbone"]["rows"]}
    assert rows["global_checkpoint"]["train_peak_mb"] < 0.8 * rows["global"]["train_peak_mb"]


def test_naive_attention_reference_matches_fused():
    from vitdet_lib.model.attention import naive_attention
    from vitdet_lib.model.pos import GridBias

    gen = torch.Generator().manual_seed(2)
    q, k, v = (torch.randn(2, 2, 12, 4, generator=gen, dtype=torch.float64) for _ in range(3))
    table = torch.randn(49, 2, generator=gen, dtype=torch.float64)
    fused = biased_attention(q, k, v, GridBias.from_table(table, (3, 4)))
    with naive_attention():
        naive = biased_attention(q, k, v, GridBias.from_table(table, (3, 4)))
    torch.testing.assert_close(fused, naive)


@pytest.mark.slow  # a ViT at 256 px, trained once per layout and attention implementation
def test_bench_naive_attention_costs_more_memory(tmp_path):
    out = tmp_path / "bench.json"
    assert main(["bench", "--parts", "backbone", "--size", "mini", "--layouts", "hybrid", "global",
                 "--attention-impls", "fused", "naive", "--image-sizes", "256",
                 "--train-sizes", "256", "--threads", "1", "--device", "cpu", "--probe-size", "128",
                 "--json", str(out)]) == 0
    rec = json.loads(out.read_text())["backbone"]
    rows = {(r["layout"], r["impl"]): r for r in rec["rows"]}
    assert len(rows) == 4
    assert (rows[("global", "naive")]["train_peak_mb"]
            > 1.2 * rows[("global", "fused")]["train_peak_mb"])
    assert {(r["layout"], r["impl"]) for r in rec["ratios_to_hybrid"]} == set(rows)
