"""The benchmark command runs end to end on a tiny config and writes its record; the fused
attention with a trainable bias matches plain attention (values and all four gradients)."""
from __future__ import annotations

import json
import math

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


@pytest.mark.parametrize("bias_shape, batch", [((1, 2, 12, 12), 3), ((3, 2, 12, 12), 3), ((3, 1, 1, 12), 3)])
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
            "--detector-image-size", "64", "--detector-set", "box_batch_size_per_image=32", "detections_per_img=5", "rpn_post_nms_top_n_train=50", "rpn_post_nms_top_n_test=20", "--data-images", "4", "--data-source-size", "64",
            "--data-workers", "0", "--threads", "1", "--probe-size", "256", "--json", str(out)]
    assert main(argv) == 0
    rec = json.loads(out.read_text())
    for key in ("command", "env", "threads", "probe_gflops_s", "backbone", "detector", "data",
                "flops_convention", "load_avg_start"):
        assert key in rec, key
    assert rec["threads"] == 1 and rec["env"]["git_commit"] is not None
    rows = rec["backbone"]["rows"]
    assert {(r["layout"], r["image_size"]) for r in rows} == {
        (lay, s) for lay in ("window", "hybrid", "global") for s in (64, 128)}
    for r in rows:
        for key in ("fwd_s", "fwd_gflops", "fwd_gmacs", "fwd_peak_mb", "fwd_efficiency",
                    "train_s", "train_gflops", "train_peak_mb", "train_efficiency", "probe_gflops_s"):
            assert r[key] > 0, (r["layout"], r["image_size"], key)
    fits = rec["backbone"]["exponent_vs_tokens"]
    assert set(fits) == {"window", "hybrid", "global"}
    assert fits["global"]["fwd_gflops"] > fits["window"]["fwd_gflops"]  # FLOPs are deterministic
    det = rec["detector"]
    assert det["train_s"] > 0 and det["train_peak_mb"] > 0 and det["infer_images_s"] > 0
    assert rec["data"]["images_s"] > 0 and rec["data"]["workers"] == 0
