"""Position information on the way in: stored sin-cos layouts kept as stored, resizing to the
1024 grid, BEiT's table into both shared tables, and the Table 4 treatments."""
import checkpoint_fakes as fakes
import pytest
import torch
from pos_reference import abs_pos_reference, rel_table_reference

from vitdet_lib.checkpoint import CheckpointError, InitConfig, initialize_backbone, resolve_pos_init
from vitdet_lib.checkpoint.init import AbsPosInit, InitKind, RelPosInit
from vitdet_lib.config import AttentionLayout, ConfigError, RelPos, from_dict, vit_config
from vitdet_lib.model.pos import rel_pos_bias, sincos_pos_embed
from vitdet_lib.model.vit import ViT

# ------------------------------------------------------------------ stored sin-cos layouts


def test_mae_and_mocov3_sincos_layouts_are_transposes_of_each_other():
    mae, moco = fakes.mae_sincos(768, 14), fakes.mocov3_sincos(768, 14)
    assert not torch.allclose(mae, moco, atol=1e-3)
    # MAE encodes the column first, MoCo v3 the row: the same table with the grid transposed
    torch.testing.assert_close(moco.reshape(14, 14, 768), mae.reshape(14, 14, 768).transpose(0, 1))
    torch.testing.assert_close(sincos_pos_embed(768, 14), mae)  # our generator follows MAE


# patch 16 and pre-training at 224 as ViT-B (14x14 -> 64x64 at 1024), narrow to stay fast
NARROW = {"dim": 64, "depth": 4, "heads": 2, "patch": 16, "grid": 14}


@pytest.fixture(scope="module")
def _narrow_1024() -> ViT:
    return ViT(vit_config("base", embed_dim=64, depth=4, num_heads=2), img_size=1024)


@pytest.fixture
def narrow_1024(_narrow_1024) -> ViT:
    """Built once, NaN-filled before each test: no value a previous test loaded survives."""
    with torch.no_grad():
        for tensor in _narrow_1024.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    return _narrow_1024


@pytest.mark.parametrize("kind,own,other", [
    ("mae", fakes.mae_sincos, fakes.mocov3_sincos),
    ("mocov3", fakes.mocov3_sincos, fakes.mae_sincos),
])
def test_sincos_taken_as_stored_and_resized_to_1024(narrow_1024, kind, own, other):
    ck = fakes.mae(**NARROW) if kind == "mae" else fakes.mocov3(**NARROW)
    report = initialize_backbone(narrow_1024, InitConfig(kind=kind), checkpoint=ck)
    stored = torch.cat([torch.zeros(1, 64), own(64, 14)])[None]
    loaded = narrow_1024.pos_embed.data
    assert loaded.shape == (1, 64, 64, 64)
    torch.testing.assert_close(loaded, abs_pos_reference(stored, 14, (64, 64), prefix=1))
    wrong = abs_pos_reference(torch.cat([torch.zeros(1, 64), other(64, 14)])[None], 14, (64, 64), 1)
    assert not torch.allclose(loaded, wrong, atol=1e-2)
    (change,) = report.shape_changes
    assert (change.key, change.stored, change.loaded) == ("pos_embed", [1, 197, 64],
                                                          [1, 64, 64, 64])
    assert "bicubic 14x14 -> 64x64" in change.how
    assert not any(v.isnan().any() for v in narrow_1024.state_dict().values()
                   if v.is_floating_point())


def test_beit_vit_b_tables_at_1024():
    vit = ViT(vit_config("base", layer_scale_init=0.1), img_size=1024)
    ck = fakes.beit(**fakes.VIT_B)
    report = initialize_backbone(vit, InitConfig(kind="beit"), checkpoint=ck)
    grid_rows = ck["model"]["rel_pos_bias.relative_position_bias_table"][:729]  # 27x27 offsets
    torch.testing.assert_close(vit.rel_pos_window_table.data, grid_rows)  # window 14: 27x27 kept
    assert vit.rel_pos_global_table.shape == (127 * 127, 12)  # global 64x64 grid: 127x127
    torch.testing.assert_close(vit.rel_pos_global_table.data,
                               rel_table_reference(grid_rows, 27, 127))
    changes = {c.key: c for c in report.shape_changes}
    assert (changes["rel_pos_window_table"].stored == [732, 12]
            and changes["rel_pos_window_table"].loaded == [729, 12])
    assert changes["rel_pos_global_table"].loaded == [16129, 12]
    assert "27x27 -> 127x127" in changes["rel_pos_global_table"].how
    # the windowed blocks see exactly the bias BEiT applied between patch tokens in pre-training
    idx = fakes.beit_index(14)
    beit_bias = grid_rows[idx.reshape(-1)].reshape(196, 196, 12).permute(2, 0, 1)
    torch.testing.assert_close(rel_pos_bias(vit.rel_pos_window_table.data, (14, 14)), beit_bias)


def test_rel_table_resize_scales_offsets_linearly():
    """A table linear in the offsets, b(dy, dx) = 3 dy - 2 dx + 1, resized from 27x27 offsets
    (+-13) to 127x127 (+-63): offset d' reads the stored plane at d' * 13/63. Where that is a
    stored offset (d' = 0, +-63) the value is the stored one exactly; elsewhere, two stored
    samples or more from the border (where bicubic replicates the edge), PyTorch's kernel
    (a = -0.75) follows the plane within 0.25 (align_corners=False, or transposed or unscaled
    offsets, would be off by more than 1)."""
    # ViT-B's grids (14x14 pre-training, 64x64 at 1024) and 12 heads, narrow and shallow
    vit = ViT(vit_config("base", embed_dim=48, depth=4, num_heads=12, layer_scale_init=0.1),
              img_size=1024)
    ck = fakes.beit(dim=48, depth=4, heads=12, patch=16, grid=14)
    dy, dx = torch.meshgrid(torch.arange(-13.0, 14), torch.arange(-13.0, 14), indexing="ij")
    linear = (3 * dy - 2 * dx + 1).reshape(-1, 1).repeat(1, 12)
    ck["model"]["rel_pos_bias.relative_position_bias_table"][:729] = linear
    initialize_backbone(vit, InitConfig(kind="beit"), checkpoint=ck)
    got = vit.rel_pos_global_table.data.reshape(127, 127, 12)  # [dy' + 63, dx' + 63, head]
    for (iy, ix), (sy, sx) in {(63, 63): (0, 0), (0, 63): (-13, 0), (63, 126): (0, 13),
                               (0, 0): (-13, -13), (126, 0): (13, -13)}.items():
        torch.testing.assert_close(got[iy, ix], torch.full((12,), 3.0 * sy - 2 * sx + 1))
    ny, nx = torch.meshgrid(torch.arange(-63.0, 64), torch.arange(-63.0, 64), indexing="ij")
    want = (3 * ny - 2 * nx) * 13 / 63 + 1
    inner = slice(10, 117)  # |d'| <= 53: two stored samples (2 x 63/13 px) from the border
    for head in (0, 11):
        torch.testing.assert_close(got[inner, inner, head], want[inner, inner], atol=0.25, rtol=0)


# -------------------------------------------------------- Table 4 treatments on a tiny ViT

TINY = {"dim": 32, "depth": 8, "heads": 2, "patch": 4, "grid": 4}  # pre-training 16 px -> 4x4 grid


def tiny_vit(**overrides) -> ViT:
    cfg = vit_config("tiny", patch_size=4, embed_dim=32, depth=8, num_heads=2, pretrain_img_size=16,
                     drop_path_rate=0.0, **overrides)
    return ViT(cfg, img_size=32)  # 8x8 detection grid, 4x4 windows, blocks 1, 3, 5, 7 global


def test_defaults_per_kind():
    cfg = vit_config("base")
    assert resolve_pos_init(InitConfig("mae", "x"), cfg) == (RelPosInit.ZERO, AbsPosInit.PRETRAINED)
    assert resolve_pos_init(InitConfig("supervised", "x"), cfg) == (RelPosInit.ZERO,
                                                                    AbsPosInit.PRETRAINED)
    assert resolve_pos_init(InitConfig("mocov3", "x"), cfg) == (RelPosInit.ZERO,
                                                                AbsPosInit.PRETRAINED)
    assert resolve_pos_init(InitConfig("beit", "x"), cfg) == (RelPosInit.PRETRAINED,
                                                              AbsPosInit.RANDOM)
    assert resolve_pos_init(InitConfig("random"), cfg) == (RelPosInit.ZERO, AbsPosInit.RANDOM)
    # a model without rel-pos / abs-pos makes the unset default "none"
    bare = vit_config("base", rel_pos="none", use_abs_pos=False)
    assert resolve_pos_init(InitConfig("beit", "x"), bare) == (RelPosInit.NONE, AbsPosInit.NONE)


@pytest.mark.parametrize("kind,fake", [("mae", fakes.mae), ("beit", fakes.beit)])
@pytest.mark.parametrize("rel", ["zero", "random"])
def test_rel_zero_and_random(kind, fake, rel):
    vit = tiny_vit(layer_scale_init=0.1 if kind == "beit" else 0.0)
    report = initialize_backbone(vit, InitConfig(kind, rel_pos_init=rel), checkpoint=fake(**TINY))
    for key in ("rel_pos_window_table", "rel_pos_global_table"):
        t = vit.state_dict()[key]
        assert key in report.missing and rel in report.missing[key]
        if rel == "zero":
            assert torch.count_nonzero(t) == 0
        else:
            assert torch.count_nonzero(t) == t.numel() and 0.005 < t.std() < 0.05
    if kind == "beit":  # the stored table was there and not used: said so
        assert "rel_pos_init=" + rel in report.dropped["rel_pos_bias.relative_position_bias_table"]


def test_rel_none_has_no_tables_and_drops_beit_table():
    vit = tiny_vit(layer_scale_init=0.1, rel_pos="none")
    report = initialize_backbone(vit, InitConfig("beit", rel_pos_init="none"),
                                 checkpoint=fakes.beit(**TINY))
    assert not any("rel_pos" in k for k in vit.state_dict())
    assert "rel_pos_init=none" in report.dropped["rel_pos_bias.relative_position_bias_table"]
    assert report.rel_pos_init == "none" and not report.missing.keys() - {"pos_embed"}


@pytest.mark.parametrize("abs_init", ["random", "none"])
def test_abs_random_and_none(abs_init):
    vit = tiny_vit(use_abs_pos=abs_init != "none")
    ck = fakes.mae(**TINY)
    report = initialize_backbone(vit, InitConfig("mae", abs_pos_init=abs_init), checkpoint=ck)
    assert f"abs_pos_init={abs_init}" in report.dropped["pos_embed"]
    if abs_init == "none":
        assert vit.pos_embed is None and "pos_embed" not in vit.state_dict()
    else:
        stored = abs_pos_reference(ck["model"]["pos_embed"], 4, (8, 8), prefix=1)
        assert not torch.allclose(vit.pos_embed.data, stored, atol=0.1)
        assert ("abs_pos_init=random" in report.missing["pos_embed"]
                and 0.005 < vit.pos_embed.std() < 0.05)


def test_beit_defaults_and_window_only_layout_with_a_larger_window():
    # window 6 (11x11 offsets) from a 4x4 pre-training grid (7x7), no global blocks
    vit = tiny_vit(layer_scale_init=0.1, attention="window", window_size=6)
    ck = fakes.beit(**TINY)
    report = initialize_backbone(vit, InitConfig("beit"), checkpoint=ck)
    assert vit.rel_pos_global_table is None
    rows = ck["model"]["rel_pos_bias.relative_position_bias_table"][:49]
    torch.testing.assert_close(vit.rel_pos_window_table.data, rel_table_reference(rows, 7, 11))
    assert set(report.missing) == {"pos_embed"}


def test_random_init_kind():
    vit = tiny_vit()
    before = vit.blocks[0].attn.qkv.weight.detach().clone()
    report = initialize_backbone(vit, InitConfig("random", rel_pos_init="random"))
    assert report.layout == "none" and not report.loaded and not report.dropped
    assert set(report.missing) == set(vit.state_dict())
    torch.testing.assert_close(vit.blocks[0].attn.qkv.weight.data, before)  # ViT's own init kept
    assert torch.count_nonzero(vit.rel_pos_window_table) > 0
    initialize_backbone(vit, InitConfig("random"))
    assert torch.count_nonzero(vit.rel_pos_window_table) == 0


@pytest.mark.parametrize("init,overrides,match", [
    (InitConfig("mae", "x", rel_pos_init="none"), {}, "rel_pos_init=none disagrees"),
    (InitConfig("mae", "x", rel_pos_init="zero"), {"rel_pos": "none"},
     "rel_pos_init=zero disagrees"),
    (InitConfig("mae", "x", abs_pos_init="none"), {}, "abs_pos_init=none disagrees"),
    (InitConfig("mae", "x", abs_pos_init="pretrained"), {"use_abs_pos": False},
     "abs_pos_init=pretrained"),
    (InitConfig("random", abs_pos_init="pretrained"), {}, "no checkpoint"),
    (InitConfig("random", "some.pth"), {}, "takes no checkpoint"),
    (InitConfig("mae"), {}, "needs init.checkpoint"),
])
def test_treatments_disagreeing_with_the_model_config(init, overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_pos_init(init, vit_config("base", **overrides))


def test_pretrained_when_the_checkpoint_has_none():
    with pytest.raises(CheckpointError, match="no absolute position embeddings"):
        initialize_backbone(tiny_vit(layer_scale_init=0.1),
                            InitConfig("beit", abs_pos_init="pretrained"),
                            checkpoint=fakes.beit(**TINY))
    with pytest.raises(CheckpointError, match="no relative-position tables"):
        initialize_backbone(tiny_vit(), InitConfig("mae", rel_pos_init="pretrained"),
                            checkpoint=fakes.mae(**TINY))


def test_init_config_from_params_data():
    init = from_dict(InitConfig, {"kind": "beit", "checkpoint": "w.pth", "rel_pos_init": "zero"})
    assert init == InitConfig(InitKind.BEIT, "w.pth", RelPosInit.ZERO, None)
    with pytest.raises(ConfigError, match="not one of"):
        from_dict(InitConfig, {"kind": "dino"})
    assert RelPos.NONE.value == "none" and AttentionLayout.WINDOW.value == "window"
