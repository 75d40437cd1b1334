"""``auto`` layout detection on every layout the converters know (and detectron2's, refused),
from loaded objects and from files, with the reason naming the deciding keys."""
import checkpoint_fakes as fakes
import pytest
import torch

from vitdet_lib.checkpoint.detect import Layout, detect_layout, init_kind_of, parse_layout
from vitdet_lib.checkpoint.init import InitKind
from vitdet_lib.checkpoint.report import CheckpointError
from vitdet_lib.config import vit_config
from vitdet_lib.model.vit import ViT

TINY = {"dim": 32, "depth": 4, "patch": 8, "grid": 4, "heads": 2}


def _ours_backbone() -> dict:
    vit = ViT(vit_config("base", embed_dim=32, depth=4, num_heads=2, patch_size=8,
                         pretrain_img_size=32), img_size=64)
    return vit.state_dict()


def _detectron2() -> dict:
    enc = fakes.encoder(32, 4, 8)
    sd = {f"backbone.net.{k}": v for k, v in enc.items()}
    sd["backbone.net.blocks.0.attn.rel_pos_h"] = torch.zeros(7, 16)
    sd["backbone.net.pos_embed"] = torch.zeros(1, 17, 32)
    return {"model": sd, "iteration": 5}


CASES = [
    ("mae", lambda: fakes.mae(**TINY), Layout.MAE, "no classifier head"),
    ("mae+decoder", lambda: fakes.mae(**TINY, decoder=True), Layout.MAE, "MAE decoder"),
    ("deit", lambda: fakes.deit(**TINY), Layout.TIMM, "head.*"),
    ("deit-distilled", lambda: fakes.deit(**TINY, distilled=True), Layout.TIMM, "distilled"),
    ("mocov3", lambda: fakes.mocov3(**TINY), Layout.MOCOV3, "module.base_encoder"),
    ("beit-shared", lambda: fakes.beit(**TINY), Layout.BEIT, "shared rel_pos_bias"),
    ("beit-per-block", lambda: fakes.beit(**TINY, per_block=True), Layout.BEIT, "per-block"),
    ("ours-backbone", lambda: _ours_backbone(), Layout.VITDET, "our backbone"),
    ("ours-detector", lambda: {"model": {f"backbone.vit.{k}": v for k, v in
                                         _ours_backbone().items()}}, Layout.VITDET, "detector"),
    ("detectron2", _detectron2, Layout.DETECTRON2, "backbone.net"),
]


@pytest.mark.parametrize("name,make,layout,evidence", CASES, ids=[c[0] for c in CASES])
def test_detects_every_layout_from_object_and_file(name, make, layout, evidence, tmp_path):
    obj = make()
    got, reason = detect_layout(obj)
    assert got == layout and evidence in reason, (got, reason)
    path = tmp_path / f"{name}.pth"
    torch.save(obj, path)
    assert detect_layout(path)[0] == layout
    assert detect_layout(str(path))[0] == layout


def test_layout_kinds_and_refusals(tmp_path):
    assert init_kind_of(Layout.MAE) == InitKind.MAE
    assert init_kind_of(Layout.TIMM) == InitKind.SUPERVISED
    assert init_kind_of(Layout.MOCOV3) == InitKind.MOCOV3
    assert init_kind_of(Layout.BEIT) == InitKind.BEIT
    assert init_kind_of(Layout.VITDET) == InitKind.DETECTOR
    with pytest.raises(CheckpointError, match="detectron2 ViTDet"):
        init_kind_of(Layout.DETECTRON2)
    assert parse_layout("auto") is None and parse_layout("beit") == Layout.BEIT
    with pytest.raises(ValueError, match="known: \\['auto', 'mae'"):
        parse_layout("dino")
    with pytest.raises(CheckpointError, match="no such checkpoint file"):
        detect_layout(tmp_path / "missing.pth")
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "resnet.pth")
    with pytest.raises(CheckpointError, match="resnet.pth: the checkpoint is not a ViT"):
        detect_layout(tmp_path / "resnet.pth")
