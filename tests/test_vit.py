"""The ViT backbone: windows, padding, shared biases, layouts, position embeddings."""
import pytest
import torch

from vitdet_lib.config import AttentionLayout, RelPos, vit_config
from vitdet_lib.model.pos import rel_pos_bias, resize_abs_pos
from vitdet_lib.model.vit import ViT, window_partition, window_unpartition


def tiny(**kw):
    base = {"patch_size": 4, "embed_dim": 32, "depth": 4, "num_heads": 2, "pretrain_img_size": 16,
            "drop_path_rate": 0.0}
    return vit_config("tiny", **{**base, **kw})


def randomize_tables(vit: ViT) -> None:
    for t in (vit.rel_pos_window_table, vit.rel_pos_global_table):
        if t is not None:
            torch.nn.init.normal_(t, std=0.5)


def test_partition_roundtrip_with_padding():
    x = torch.randn(2, 11, 9, 5)
    win, padded = window_partition(x, 4)
    assert win.shape == (2 * 3 * 3, 16, 5) and padded == (12, 12)
    torch.testing.assert_close(window_unpartition(win, 4, padded, (11, 9)), x)


def test_rel_pos_bias_matches_explicit_lookup():
    h, w, r, heads = 3, 4, 5, 2
    table = torch.randn((2 * r - 1) ** 2, heads)
    plane = table.T.reshape(heads, 2 * r - 1, 2 * r - 1)
    ref = torch.empty(heads, h * w, h * w)
    for i1 in range(h):
        for j1 in range(w):
            for i2 in range(h):
                for j2 in range(w):
                    ref[:, i1 * w + j1, i2 * w + j2] = plane[:, i1 - i2 + r - 1, j1 - j2 + r - 1]
    torch.testing.assert_close(rel_pos_bias(table, (h, w)), ref)


def test_one_window_covering_the_grid_equals_global():
    # 16x16 input, patch 4 -> 4x4 grid; a 4-token window covers it exactly
    torch.manual_seed(0)
    win = ViT(tiny(attention=AttentionLayout.WINDOW, window_size=4), img_size=16).eval()
    glob = ViT(tiny(attention=AttentionLayout.GLOBAL), img_size=16).eval()
    randomize_tables(win)
    state = win.state_dict()
    # the windowed model's shared table becomes the global model's (same 7x7 offsets)
    state["rel_pos_global_table"] = state.pop("rel_pos_window_table")
    glob.load_state_dict(state)
    x = torch.randn(2, 3, 16, 16)
    for a, b in zip(win(x), glob(x)):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_padded_windows_leave_real_tokens_unchanged():
    """A 6x6 grid in 4-token windows (padded to 8x8) equals an unpadded reference computed
    window by window on the real tokens only."""
    torch.manual_seed(0)
    vit = ViT(tiny(attention=AttentionLayout.WINDOW, window_size=4, depth=4, use_abs_pos=False),
              img_size=24).eval()
    randomize_tables(vit)
    x = torch.randn(1, 3, 24, 24)
    out = vit(x)[0]  # after block 0 (first quarter end)

    blk = vit.blocks[0]
    tokens = vit.patch_embed.proj(x).permute(0, 2, 3, 1)  # [1, 6, 6, C]
    ref = torch.empty_like(tokens)
    full_bias = rel_pos_bias(vit.rel_pos_window_table, (4, 4))  # [heads, 16, 16]
    y = blk.norm1(tokens)
    for i0 in (0, 4):
        for j0 in (0, 4):
            patch = y[:, i0:i0 + 4, j0:j0 + 4]  # real tokens only: 4x4, 4x2, 2x4 or 2x2
            h, w = patch.shape[1:3]
            idx = torch.tensor([i * 4 + j for i in range(h) for j in range(w)])
            bias = full_bias[:, idx][:, :, idx][None]
            a = blk.attn(patch.reshape(1, h * w, -1), bias).view(1, h, w, -1)
            ref[:, i0:i0 + h, j0:j0 + w] = a
    ref = tokens + ref
    ref = ref + blk.mlp(blk.norm2(ref))
    torch.testing.assert_close(out, ref.permute(0, 3, 1, 2), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("depth", [8, 12, 24])
def test_shared_biases_are_two_tensors_whatever_the_depth(depth):
    vit = ViT(tiny(depth=depth), img_size=32)
    tables = [n for n, _ in vit.named_parameters() if "rel_pos" in n]
    assert tables == ["rel_pos_window_table", "rel_pos_global_table"]
    assert not any("index" in k for k in vit.state_dict())  # no stored index buffers


def test_layouts_choose_global_blocks():
    assert tiny(depth=12).global_block_indexes == (2, 5, 8, 11)
    assert vit_config("base").global_block_indexes == (2, 5, 8, 11)  # docs/paper.md: ViT-B hybrid
    assert vit_config("large").global_block_indexes == (5, 11, 17, 23)
    assert tiny(attention=AttentionLayout.WINDOW).global_block_indexes == ()
    assert tiny(attention=AttentionLayout.GLOBAL_CHECKPOINT).global_block_indexes == (0, 1, 2, 3)
    none = ViT(tiny(rel_pos=RelPos.NONE), img_size=32)
    assert not [n for n, _ in none.named_parameters() if "rel_pos" in n]


def test_checkpointed_global_matches_global_with_gradients():
    torch.manual_seed(0)
    plain = ViT(tiny(attention=AttentionLayout.GLOBAL), img_size=16)
    ckpt = ViT(tiny(attention=AttentionLayout.GLOBAL_CHECKPOINT), img_size=16)
    ckpt.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 16, 16)
    sum(o.sum() for o in plain(x)).backward()
    sum(o.sum() for o in ckpt(x)).backward()
    for (n, a), (_, b) in zip(plain.named_parameters(), ckpt.named_parameters()):
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-4, atol=1e-5, msg=n)


def test_any_multiple_of_patch_runs_and_other_sizes_are_padded():
    vit = ViT(tiny(), img_size=32).eval()
    assert vit(torch.randn(1, 3, 36, 20))[0].shape == (1, 32, 9, 5)
    assert vit(torch.randn(1, 3, 37, 21))[0].shape == (1, 32, 10, 6)  # padded to 40x24


def test_resize_abs_pos_keeps_matching_grids_and_drops_prefix_tokens():
    pos = torch.randn(1, 1 + 14 * 14, 8)
    same = resize_abs_pos(pos, (14, 14), num_prefix_tokens=1)
    torch.testing.assert_close(same, pos[:, 1:].reshape(1, 14, 14, 8))
    assert resize_abs_pos(pos, (64, 64), num_prefix_tokens=1).shape == (1, 64, 64, 8)


def test_layer_scale_and_drop_path_schedule():
    vit = ViT(tiny(layer_scale_init=0.1, drop_path_rate=0.3), img_size=16)
    assert torch.allclose(vit.blocks[0].gamma_1, torch.full((32,), 0.1))
    rates = [b.drop_path.p for b in vit.blocks]
    assert rates[0] == 0.0 and rates[-1] == pytest.approx(0.3) and rates == sorted(rates)


def test_global_bias_forms_agree(monkeypatch):
    """CPU training gets the factored global bias, inference the cached dense one (or the
    factored one past DENSE_BIAS_MAX_BYTES): all three give the same features."""
    import vitdet_lib.model.vit as vit_mod
    from vitdet_lib.model.pos import GridBias

    torch.manual_seed(0)
    vit = ViT(tiny(attention=AttentionLayout.HYBRID), img_size=32).eval()
    randomize_tables(vit)
    x = torch.randn(2, 3, 32, 24)  # a non-square 8x6 grid
    with torch.no_grad():
        dense_out = vit(x)
        assert not isinstance(vit.attention_masks((8, 6), 2, x.device)[1], GridBias)
    assert isinstance(vit.attention_masks((8, 6), 2, x.device)[1], GridBias)  # grad enabled
    grad_out = vit(x)
    monkeypatch.setattr(vit_mod, "DENSE_BIAS_MAX_BYTES", 0)
    vit.clear_mask_cache()
    with torch.no_grad():
        factored_out = vit(x)
        assert isinstance(vit.attention_masks((8, 6), 2, x.device)[1], GridBias)
    for a, b, c in zip(dense_out, grad_out, factored_out):
        torch.testing.assert_close(a, b.detach(), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(a, c, rtol=1e-5, atol=1e-5)


def test_bf16_autocast_casts_masks_once_and_trains():
    """CPU bf16 autocast (the paper's AMP): masks are built in bf16 once per forward (and cached
    for inference under their dtype), outputs stay close to fp32, gradients reach the tables."""
    torch.manual_seed(0)
    vit = ViT(tiny(attention=AttentionLayout.HYBRID, depth=8), img_size=32)
    randomize_tables(vit)
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = vit.eval()(x)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = vit(x)
            window_mask, global_mask = vit.attention_masks((8, 8), 1, x.device)
    assert window_mask.dtype == global_mask.dtype == torch.bfloat16
    for a, b in zip(out, ref):
        assert ((a.float() - b).norm() / b.norm()) < 2e-2
    vit.train()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = sum(o.float().pow(2).mean() for o in vit(x))
    loss.backward()
    for t in (vit.rel_pos_window_table, vit.rel_pos_global_table):
        assert t.grad is not None and t.grad.dtype == torch.float32 and t.grad.abs().sum() > 0
