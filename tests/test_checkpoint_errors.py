"""Refusals: wrong model, wrong dimensions, unaccounted keys, wrong file for the init kind."""
import argparse
import pathlib

import checkpoint_fakes as fakes
import pytest
import torch

from vitdet_lib.checkpoint import CheckpointError, InitConfig, initialize_backbone
from vitdet_lib.config import vit_config
from vitdet_lib.model.vit import ViT

SMALL = {"dim": 64, "depth": 4, "heads": 2, "patch": 16, "grid": 2}  # checkpoint side


def small_vit(**overrides) -> ViT:
    base = {"patch_size": 16, "embed_dim": 64, "depth": 4, "num_heads": 2, "pretrain_img_size": 32,
            "drop_path_rate": 0.0}
    return ViT(vit_config("tiny", **{**base, **overrides}), img_size=64)


def load(vit: ViT, kind: str, checkpoint) -> None:
    initialize_backbone(vit, InitConfig(kind), checkpoint=checkpoint)


def test_small_checkpoint_loads():  # the baseline the failures below depart from
    load(small_vit(), "mae", fakes.mae(**SMALL))


@pytest.mark.parametrize("overrides,message", [
    ({"embed_dim": 32, "num_heads": 2}, "width (embed_dim): checkpoint 64, config 32"),
    ({"depth": 8}, "depth (number of blocks): checkpoint 4, config 8"),
    ({"patch_size": 8, "pretrain_img_size": 16},
     "patch size (patch_size): checkpoint (16, 16), config (8, 8)"),
    ({"mlp_ratio": 2.0}, "MLP hidden width (embed_dim * mlp_ratio): checkpoint 256, config 128"),
])
def test_dimension_mismatch_names_dimension_and_both_values(overrides, message):
    with pytest.raises(CheckpointError) as err:
        load(small_vit(**overrides), "mae", fakes.mae(**SMALL))
    assert message in str(err.value)


def test_width_and_depth_mismatch_reported_together():
    with pytest.raises(CheckpointError,
                       match=r"width .*checkpoint 768, config 64; depth .*checkpoint 12, config 4"):
        load(small_vit(), "supervised", fakes.deit(**fakes.VIT_B))


def test_heads_mismatch_from_beit_table():
    with pytest.raises(CheckpointError,
                       match=r"attention heads \(num_heads\): checkpoint 4, config 2"):
        load(small_vit(layer_scale_init=0.1), "beit", fakes.beit(**{**SMALL, "heads": 4}))


def test_beit_needs_layer_scale_in_the_config():
    with pytest.raises(CheckpointError, match=r"layer scale .*checkpoint True, config False"):
        load(small_vit(), "beit", fakes.beit(**SMALL))


def test_not_a_vit():
    resnet = {"model": {"conv1.weight": torch.zeros(64, 3, 7, 7), "bn1.weight": torch.ones(64),
                        "layer1.0.conv1.weight": torch.zeros(64, 64, 1, 1),
                        "fc.weight": torch.zeros(1000, 2048)}}
    with pytest.raises(CheckpointError, match="not a ViT.*conv1.weight"):
        load(small_vit(), "supervised", resnet)
    with pytest.raises(CheckpointError, match="must be a mapping"):
        load(small_vit(), "mae", [torch.zeros(1)])
    with pytest.raises(CheckpointError, match="no state dict found"):
        load(small_vit(), "mae", {"epoch": 3, "args": "x"})


def test_unaccounted_key_is_refused_not_skipped():
    ck = fakes.mae(**SMALL)
    ck["model"]["blocks.0.attn.extra_scale"] = torch.ones(2)
    with pytest.raises(CheckpointError,
                       match=r"no timm rule accounts for.*blocks\.0\.attn\.extra_scale"):
        load(small_vit(), "mae", ck)


def test_missing_model_key_is_refused():
    ck = fakes.mae(**SMALL)
    del ck["model"]["blocks.2.mlp.fc1.bias"]
    with pytest.raises(CheckpointError, match=r"lacks 1 model key.*blocks\.2\.mlp\.fc1\.bias"):
        load(small_vit(), "mae", ck)


@pytest.mark.parametrize("kind,fake",
                         [("beit", fakes.mocov3), ("mae", fakes.beit), ("detector", fakes.mae)])
def test_wrong_file_for_the_init_kind(kind, fake):
    with pytest.raises(CheckpointError, match=f"layout, but init.kind={kind}"):
        load(small_vit(layer_scale_init=0.1), kind, fake(**SMALL))


def test_file_reading_is_weights_only(tmp_path):
    ok = tmp_path / "mae_with_args.pth"
    torch.save({**fakes.mae(**SMALL), "args": argparse.Namespace(lr=1e-3), "epoch": 1599}, ok)
    report = initialize_backbone(small_vit(), InitConfig("mae", str(ok)))
    assert report.checkpoint == str(ok)

    bad = tmp_path / "pickled_object.pth"
    torch.save({**fakes.mae(**SMALL), "extra": pathlib.PurePosixPath("not/allowed")}, bad)
    with pytest.raises(CheckpointError, match="refusing to unpickle"):
        initialize_backbone(small_vit(), InitConfig("mae", str(bad)))
