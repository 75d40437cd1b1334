"""Official ViT-B/16 checkpoint layouts (MAE, MoCo v3, DeiT, BEiT) into the detection ViT-B:
every checkpoint key loaded or dropped for a stated reason, every model key loaded or declared
new by the positional treatment, and the values land where they belong."""
import re

import checkpoint_fakes as fakes
import pytest
import torch

from vitdet_lib.checkpoint import (
    InitConfig,
    LoadReport,
    detect_layout,
    initialize_backbone,
    unwrap_state,
)
from vitdet_lib.config import vit_config
from vitdet_lib.model.vit import ViT

IMG = 224  # 14x14 grid: the window is the whole grid, so no resize blurs the value checks


@pytest.fixture(scope="module")
def _vit_b() -> ViT:
    return ViT(vit_config("base"), img_size=IMG)


@pytest.fixture(scope="module")
def _vit_b_ls() -> ViT:
    return ViT(vit_config("base", layer_scale_init=0.1), img_size=IMG)


def _poisoned(vit: ViT) -> ViT:
    """``vit`` with every floating weight and buffer set to NaN: the models are built once per
    module for speed, but nothing a previous test loaded may survive into the next (where it
    would pass for a value this test's loading put there), and any weight this test's loading
    leaves untouched shows as NaN."""
    with torch.no_grad():
        for tensor in vit.state_dict().values():
            if tensor.is_floating_point():
                tensor.fill_(float("nan"))
    return vit


@pytest.fixture
def vit_b(_vit_b) -> ViT:
    return _poisoned(_vit_b)


@pytest.fixture
def vit_b_ls(_vit_b_ls) -> ViT:
    """ViT-B with layer scale, as BEiT needs."""
    return _poisoned(_vit_b_ls)


def assert_strict(report: LoadReport, checkpoint: dict, vit: ViT, new: set[str]) -> None:
    """Every checkpoint key is loaded or dropped with a reason; every model key is loaded or
    is one of ``new`` (the treatment's fresh tensors)."""
    state, _ = unwrap_state(checkpoint)
    used = set(report.dropped)
    for origin in report.loaded.values():
        used |= set(re.findall(r"[\w.]+", origin))
    assert not set(state) - used, sorted(set(state) - used)[:5]
    assert all(reason.strip() for reason in report.dropped.values())
    assert set(report.missing) == new
    assert set(report.loaded) | new == set(vit.state_dict())
    assert not set(report.loaded) & new
    for key in new & ZERO_TABLES:  # declared new and zero-initialised: really zeros now
        assert torch.count_nonzero(vit.state_dict()[key]) == 0, key
    assert_all_written(vit)


def assert_all_written(vit: ViT) -> None:
    """No weight is left at the NaN the fixtures put there."""
    nan = [k for k, v in vit.state_dict().items() if v.is_floating_point() and v.isnan().any()]
    assert not nan, f"left at their poisoned value: {nan[:5]}"


def assert_encoder_landed(vit: ViT, enc: dict[str, torch.Tensor],
                          skip_qkv_bias: bool = False) -> None:
    sd = vit.state_dict()
    for key in ("patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.5.mlp.fc1.weight",
                "blocks.11.mlp.fc2.bias", "blocks.11.norm2.weight", "blocks.7.attn.proj.weight"):
        torch.testing.assert_close(sd[key], enc[key], rtol=0, atol=0)
    if not skip_qkv_bias:
        torch.testing.assert_close(sd["blocks.3.attn.qkv.bias"], enc["blocks.3.attn.qkv.bias"],
                                   rtol=0, atol=0)


ZERO_TABLES = {"rel_pos_window_table", "rel_pos_global_table"}


@pytest.mark.parametrize("decoder", [False, True], ids=["encoder", "with-decoder"])
def test_mae(vit_b, decoder):
    ck = fakes.mae(**fakes.VIT_B, decoder=decoder)
    report = initialize_backbone(vit_b, InitConfig(kind="mae"), checkpoint=ck)
    assert (report.layout == "timm"
            and (report.rel_pos_init, report.abs_pos_init) == ("zero", "pretrained"))
    assert_strict(report, ck, vit_b, new=ZERO_TABLES)
    assert_encoder_landed(vit_b, fakes.encoder())
    # the same 14x14 grid: stored row-major after the class slot, taken as is
    torch.testing.assert_close(vit_b.pos_embed.data,
                               ck["model"]["pos_embed"][:, 1:].reshape(1, 14, 14, 768))
    assert "norm.weight" in report.dropped and "cls_token" in report.dropped
    if decoder:
        assert "MAE decoder" in report.dropped["decoder_blocks.7.mlp.fc2.weight"]


def test_mocov3(vit_b):
    ck = fakes.mocov3(**fakes.VIT_B)
    assert detect_layout(ck["state_dict"]).value == "mocov3"
    report = initialize_backbone(vit_b, InitConfig(kind="mocov3"), checkpoint=ck)
    assert_strict(report, ck, vit_b, new=ZERO_TABLES)
    assert_encoder_landed(vit_b, fakes.encoder())
    assert (report.loaded["blocks.0.attn.qkv.weight"]
            == "module.base_encoder.blocks.0.attn.qkv.weight")
    dropped = report.dropped
    assert "momentum encoder" in dropped["module.momentum_encoder.blocks.0.attn.qkv.weight"]
    assert "predictor" in dropped["module.predictor.3.weight"]
    assert "projection MLP" in dropped["module.base_encoder.head.6.weight"]
    stored = ck["state_dict"]["module.base_encoder.pos_embed"]
    torch.testing.assert_close(vit_b.pos_embed.data, stored[:, 1:].reshape(1, 14, 14, 768))


def test_mocov3_after_its_convert_to_deit(vit_b):
    """MoCo v3's own conversion strips ``module.base_encoder.`` and the head: timm layout."""
    state = {k[len("module.base_encoder."):]: v
             for k, v in fakes.mocov3(**fakes.VIT_B)["state_dict"].items()
             if k.startswith("module.base_encoder.") and ".head." not in k}
    report = initialize_backbone(vit_b, InitConfig(kind="mocov3"), checkpoint={"model": state})
    assert report.layout == "timm"
    assert_encoder_landed(vit_b, fakes.encoder())
    assert_all_written(vit_b)


@pytest.mark.parametrize("distilled", [False, True], ids=["deit", "deit-distilled"])
def test_deit(vit_b, distilled):
    ck = fakes.deit(**fakes.VIT_B, distilled=distilled)
    report = initialize_backbone(vit_b, InitConfig(kind="supervised"), checkpoint=ck)
    assert_strict(report, ck, vit_b, new=ZERO_TABLES)
    assert_encoder_landed(vit_b, fakes.encoder())
    prefix = 2 if distilled else 1  # class (+ distillation) slots precede the grid
    stored = ck["model"]["pos_embed"]
    torch.testing.assert_close(vit_b.pos_embed.data, stored[:, prefix:].reshape(1, 14, 14, 768))
    assert "classification head" in report.dropped["head.weight"]
    if distilled:
        assert {"dist_token", "head_dist.weight", "head_dist.bias"} <= set(report.dropped)


def test_beit_shared_table(vit_b_ls):
    ck = fakes.beit(**fakes.VIT_B)
    sd = ck["model"]
    report = initialize_backbone(vit_b_ls, InitConfig(kind="beit"), checkpoint=ck)
    assert (report.rel_pos_init, report.abs_pos_init) == ("pretrained", "random")
    assert_strict(report, ck, vit_b_ls, new={"pos_embed"})
    assert_encoder_landed(vit_b_ls, fakes.encoder(), skip_qkv_bias=True)
    state = vit_b_ls.state_dict()
    for i in (0, 11):  # q and v biases folded into one qkv bias, zeros for k
        q, v = sd[f"blocks.{i}.attn.q_bias"], sd[f"blocks.{i}.attn.v_bias"]
        torch.testing.assert_close(state[f"blocks.{i}.attn.qkv.bias"],
                                   torch.cat([q, torch.zeros(768), v]))
        torch.testing.assert_close(state[f"blocks.{i}.gamma_1"], sd[f"blocks.{i}.gamma_1"])
        torch.testing.assert_close(state[f"blocks.{i}.gamma_2"], sd[f"blocks.{i}.gamma_2"])
    table = sd["rel_pos_bias.relative_position_bias_table"]  # [27*27 + 3, 12]
    assert table.shape == (732, 12)
    torch.testing.assert_close(state["rel_pos_window_table"], table[:729])
    torch.testing.assert_close(state["rel_pos_global_table"], table[:729])  # global grid 14 here
    assert ({"mask_token", "lm_head.weight", "rel_pos_bias.relative_position_index"}
            <= set(report.dropped))
    assert not any("q_bias" in k for k in report.dropped)  # consumed, not dropped


def test_beit_per_block_tables_average_per_attention_kind(vit_b_ls):
    ck = fakes.beit(**fakes.VIT_B, per_block=True)
    sd = ck["model"]
    report = initialize_backbone(vit_b_ls, InitConfig(kind="beit"), checkpoint=ck)
    assert_strict(report, ck, vit_b_ls, new={"pos_embed"})
    global_idx = (2, 5, 8, 11)
    window_idx = [i for i in range(12) if i not in global_idx]

    def mean(idx):
        return torch.stack([sd[f"blocks.{i}.attn.relative_position_bias_table"][:729]
                            for i in idx]).mean(0)

    torch.testing.assert_close(vit_b_ls.rel_pos_window_table.data, mean(window_idx))
    torch.testing.assert_close(vit_b_ls.rel_pos_global_table.data, mean(global_idx))
    assert "blocks.4.attn.relative_position_index" in report.dropped


def test_report_summary_and_json(vit_b):
    report = initialize_backbone(vit_b, InitConfig(kind="mae"), checkpoint=fakes.mae(**fakes.VIT_B))
    text = report.summary()
    assert ("dropped from checkpoint" in text and "final encoder norm" in text
            and "[1, 197, 768]" in text)
    import json
    data = json.loads(report.to_json())
    assert data["missing"]["rel_pos_window_table"].startswith("zeros")
    assert data["shape_changes"][0]["stored"] == [1, 197, 768]
