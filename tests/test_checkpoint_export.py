"""fp16 weights-only exports: smaller, same layout, and they initialise the backbone as the
full checkpoint does (to fp16 rounding)."""
import checkpoint_fakes as fakes
import pytest
import torch

from vitdet_lib.checkpoint import CheckpointError, InitConfig, initialize_backbone
from vitdet_lib.checkpoint.export import export_backbone, export_detector
from vitdet_lib.config import vit_config
from vitdet_lib.model.vit import ViT

SMALL = {"dim": 64, "depth": 4, "patch": 8, "grid": 8}


def _vit(**kw):
    return ViT(vit_config("base", embed_dim=64, depth=4, num_heads=2, patch_size=8, **kw),
               img_size=64)


@pytest.mark.parametrize("kind, make, kw", [
    ("mae", fakes.mae, {"decoder": True}),
    ("mocov3", fakes.mocov3, {}),
    ("supervised", fakes.deit, {}),
    ("beit", fakes.beit, {"heads": 2}),
])
def test_export_initialises_like_the_full_checkpoint(tmp_path, kind, make, kw):
    full = make(**SMALL, **kw)
    torch.save(full, tmp_path / "full.pth")
    info = export_backbone(tmp_path / "full.pth", tmp_path / "small.pth")
    small = torch.load(tmp_path / "small.pth", weights_only=True)
    assert info["bytes"] < (tmp_path / "full.pth").stat().st_size
    assert all(v.dtype == torch.float16 for v in next(iter(small.values())).values()
               if v.is_floating_point())

    vit_kw = {"layer_scale_init": 0.1} if kind == "beit" else {}
    a, b = _vit(**vit_kw), _vit(**vit_kw)
    torch.manual_seed(0)
    initialize_backbone(a, InitConfig(kind=kind), checkpoint=full)
    torch.manual_seed(0)  # the same draws for whatever is initialised at random
    initialize_backbone(b, InitConfig(kind=kind), checkpoint=small)
    for (name, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert y.dtype == x.dtype, name
        torch.testing.assert_close(y, x, rtol=2e-3, atol=2e-3, msg=name)


def test_export_drops_what_fine_tuning_never_reads(tmp_path):
    torch.save(fakes.mae(**SMALL, decoder=True), tmp_path / "mae.pth")
    export_backbone(tmp_path / "mae.pth", tmp_path / "out.pth")
    keys = torch.load(tmp_path / "out.pth", weights_only=True)["model"]
    assert "cls_token" in keys  # kept: it tells the timm layout apart
    assert not [k for k in keys if k.startswith(("decoder_", "mask_token"))]


def test_export_refuses_a_file_that_is_not_a_vit(tmp_path):
    torch.save({"model": {"fc.weight": torch.zeros(2, 2)}}, tmp_path / "x.pth")
    with pytest.raises(CheckpointError, match="not a ViT"):
        export_backbone(tmp_path / "x.pth", tmp_path / "out.pth")
    assert not (tmp_path / "out.pth").exists()


def test_detector_export_keeps_weights_only(tmp_path):
    torch.save({"model": {"w": torch.ones(3)}, "optimizer": {"state": {}}, "config": {"a": 1}},
               tmp_path / "det.pth")
    export_detector(tmp_path / "det.pth", tmp_path / "out.pth")
    out = torch.load(tmp_path / "out.pth", weights_only=True)
    assert set(out) == {"model", "config"} and out["model"]["w"].dtype == torch.float16
