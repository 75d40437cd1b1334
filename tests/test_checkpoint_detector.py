"""Our own checkpoints: a full detector (fine-tuning from a fine-tuned model) and the output of
``vitdet-bench convert``, which loads back as ``--kind detector``."""
import json

import checkpoint_fakes as fakes
import pytest
import torch
from pos_reference import abs_pos_reference, rel_table_reference

from vitdet_lib import cli
from vitdet_lib.checkpoint import InitConfig, initialize_backbone
from vitdet_lib.config import DetectorConfig, ModelConfig, vit_config
from vitdet_lib.model import build_detector
from vitdet_lib.model.vit import ViT

VIT = {"patch_size": 16, "embed_dim": 64, "depth": 8, "num_heads": 2, "pretrain_img_size": 32,
       "drop_path_rate": 0.0}


def detector_state(image_size: int = 64) -> dict[str, torch.Tensor]:
    det = build_detector(ModelConfig(vit_config("tiny", **VIT, layer_scale_init=0.1),
                                     DetectorConfig(num_classes=3, image_size=image_size,
                                                    fpn_channels=32,
                                                    anchor_sizes=(8, 16, 32, 64, 128))))
    vit = det.backbone.vit
    for t in (vit.rel_pos_window_table, vit.rel_pos_global_table, vit.blocks[1].gamma_1):
        torch.nn.init.normal_(t, std=0.5)  # "fine-tuned": nothing at its init value
    return det.state_dict()


@pytest.mark.parametrize("ddp", [False, True], ids=["plain", "ddp-prefix"])
def test_detector_round_trip_from_file(tmp_path, ddp):
    state = detector_state()
    if ddp:
        state = {f"module.{k}": v for k, v in state.items()}
    path = tmp_path / "last.pth"
    torch.save({"model": state, "optimizer": {"state": {}}, "iteration": 10}, path)
    vit = ViT(vit_config("tiny", **VIT, layer_scale_init=0.1), img_size=64)
    report = initialize_backbone(vit, InitConfig("detector", str(path)))
    assert (report.layout == "vitdet"
            and (report.rel_pos_init, report.abs_pos_init) == ("pretrained", "pretrained"))
    assert not report.missing and not report.shape_changes
    prefix = "module." if ddp else ""
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(value, state[f"{prefix}backbone.vit.{key}"], rtol=0, atol=0)
    outside = {k for k in state if not k.startswith(f"{prefix}backbone.vit.")}
    assert outside == set(report.dropped) and any(".fpn." in k for k in outside)
    assert all("outside the ViT" in r for r in report.dropped.values())


def test_detector_to_another_input_size_resizes_position_information():
    state = detector_state(image_size=64)  # 4x4 grid
    vit = ViT(vit_config("tiny", **VIT, layer_scale_init=0.1), img_size=128)  # 8x8 grid
    report = initialize_backbone(vit, InitConfig("detector"), checkpoint={"model": state})
    stored_pos = state["backbone.vit.pos_embed"]  # [1, 4, 4, C]
    assert stored_pos.shape == (1, 4, 4, 64)
    torch.testing.assert_close(vit.pos_embed.data,
                               abs_pos_reference(stored_pos.reshape(1, 16, 64), 4, (8, 8)))
    torch.testing.assert_close(vit.rel_pos_global_table.data,
                               rel_table_reference(state["backbone.vit.rel_pos_global_table"],
                                                   7, 15))
    torch.testing.assert_close(vit.rel_pos_window_table.data,
                               state["backbone.vit.rel_pos_window_table"])
    assert {c.key for c in report.shape_changes} == {"pos_embed", "rel_pos_global_table"}


def convert(argv: list[str]) -> int:
    return cli.main(["convert", *argv])  # errors become exit codes in cli.main only


def test_convert_command_writes_backbone_that_loads_back(tmp_path, capsys):
    assert "vitdet_lib.checkpoint.commands" in cli.COMMAND_MODULES
    # the "mini" size, 64 px pre-training
    mini = {"dim": 192, "depth": 8, "heads": 3, "patch": 8, "grid": 8}
    src, out, js = tmp_path / "mae.pth", tmp_path / "out" / "vit.pth", tmp_path / "report.json"
    ck = fakes.mae(**mini)
    torch.save(ck, src)
    rc = convert(["--kind", "mae", "--checkpoint", str(src), "--size", "mini", "--out", str(out),
                  "--img-size", "128", "--report-json", str(js)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "kind=mae" in printed and "bicubic 8x8 -> 16x16" in printed and f"wrote {out}" in printed
    written = torch.load(out, weights_only=True)
    assert written["pos_embed"].shape == (1, 16, 16, 192)
    torch.testing.assert_close(written["blocks.7.attn.qkv.weight"],
                               ck["model"]["blocks.7.attn.qkv.weight"])
    assert json.loads(js.read_text())["kind"] == "mae"
    assert not list(out.parent.glob("*.tmp"))  # written via a temporary file, nothing left over

    vit = ViT(vit_config("mini"), img_size=128)
    report = initialize_backbone(vit, InitConfig("detector", str(out)))
    assert report.layout == "vitdet" and not report.missing and not report.dropped
    for key, value in vit.state_dict().items():
        torch.testing.assert_close(value, written[key], rtol=0, atol=0)


def test_convert_none_treatments_shape_the_model_and_errors_exit_nonzero(tmp_path, capsys):
    src = tmp_path / "beit.pth"
    torch.save(fakes.beit(dim=192, depth=8, heads=3, patch=8, grid=8), src)
    out = tmp_path / "vit.pth"
    assert convert(["--kind", "beit", "--checkpoint", str(src), "--size", "mini", "--out", str(out),
                    "--img-size", "64", "--rel-pos-init", "none", "--abs-pos-init", "none"]) == 0
    written = torch.load(out, weights_only=True)
    assert "pos_embed" not in written and not any("rel_pos" in k for k in written)
    assert "blocks.0.gamma_1" in written
    capsys.readouterr()
    assert convert(["--kind", "mae", "--checkpoint", str(src), "--size", "mini", "--out",
                    str(tmp_path / "never.pth")]) == 2
    assert "layout, but init.kind=mae" in capsys.readouterr().err
    assert not (tmp_path / "never.pth").exists()
