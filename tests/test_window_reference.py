"""The fast window partition equals the plain pad -> view -> permute reference, padding included,
and a windowed ViT gives the same features (and gradients) with either."""
import pytest
import torch

import vitdet_lib.model.vit as vit_mod
from vitdet_lib.config import AttentionLayout, vit_config
from vitdet_lib.model import (
    ViT,
    window_partition,
    window_partition_reference,
    window_unpartition,
    window_unpartition_reference,
)

# (H, W, r): no padding, padding of rows only, of columns only, of both, a grid smaller than one
# window, r = 1, and the paper's 64 x 64 grid with r = 14 (padded to 70 x 70)
CASES = [(8, 8, 4), (10, 8, 4), (8, 11, 4), (11, 9, 4), (3, 2, 5), (5, 7, 1), (64, 64, 14)]


@pytest.mark.parametrize(("h", "w", "r"), CASES)
def test_partition_matches_reference(h, w, r):
    x = torch.randn(2, h, w, 3)
    fast, fast_hw = window_partition(x, r)
    ref, ref_hw = window_partition_reference(x, r)
    assert fast_hw == ref_hw == (h + (-h) % r, w + (-w) % r)
    assert fast.shape == ref.shape == (2 * (fast_hw[0] // r) * (fast_hw[1] // r), r * r, 3)
    torch.testing.assert_close(fast, ref, rtol=0, atol=0)  # a copy: bit-identical, zeros included


@pytest.mark.parametrize(("h", "w", "r"), CASES)
def test_unpartition_matches_reference(h, w, r):
    hp, wp = h + (-h) % r, w + (-w) % r
    windows = torch.randn(2 * (hp // r) * (wp // r), r * r, 3)  # padding slots hold values too
    fast = window_unpartition(windows, r, (hp, wp), (h, w))
    ref = window_unpartition_reference(windows, r, (hp, wp), (h, w))
    assert fast.shape == ref.shape == (2, h, w, 3)
    torch.testing.assert_close(fast, ref, rtol=0, atol=0)
    x = torch.randn(2, h, w, 3)
    ref_windows, padded = window_partition_reference(x, r)
    roundtrip = window_unpartition_reference(ref_windows, r, padded, (h, w))
    torch.testing.assert_close(roundtrip, x, rtol=0, atol=0)


@pytest.mark.parametrize("img", [(32, 32), (36, 28)])  # 8x8 tokens: whole windows; 9x7: padded
def test_windowed_vit_same_with_reference(monkeypatch, img):
    """Swapping the reference into the ViT's blocks changes neither features nor gradients."""
    cfg = vit_config("tiny", patch_size=4, embed_dim=32, depth=8, num_heads=2,
                     pretrain_img_size=16, drop_path_rate=0.0, attention=AttentionLayout.HYBRID)
    vit = ViT(cfg, img_size=32)  # blocks 0, 2, 4, 6 windowed (r = 16 / 4 = 4), the others global
    assert vit.blocks[0].window_size == 4
    torch.nn.init.normal_(vit.rel_pos_window_table, std=0.5)
    x = torch.randn(2, 3, *img)

    def run() -> tuple[list[torch.Tensor], torch.Tensor]:
        vit.zero_grad(set_to_none=True)
        outs = vit(x)
        sum(o.pow(2).mean() for o in outs).backward()
        return [o.detach() for o in outs], vit.blocks[0].attn.qkv.weight.grad.clone()

    fast_outs, fast_grad = run()
    monkeypatch.setattr(vit_mod, "window_partition", window_partition_reference)
    monkeypatch.setattr(vit_mod, "window_unpartition", window_unpartition_reference)
    ref_outs, ref_grad = run()
    for a, b in zip(fast_outs, ref_outs):
        torch.testing.assert_close(a, b)
    torch.testing.assert_close(fast_grad, ref_grad)
