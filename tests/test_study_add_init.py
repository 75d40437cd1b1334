"""``--add-init NAME=PATH[:LAYOUT]``: a checkpoint file joins a profile's init comparison (Table 1,
Figure 2, the tuning sweep), with its layout detected or checked, and bad specs refused by name."""
import checkpoint_fakes as fakes
import pytest
import torch

from vitdet_lib.config import ConfigError
from vitdet_lib.study.add_init import add_inits, load_benchmark_profile, parse_spec
from vitdet_lib.study.profile import expand_runs, load_profile

# the smoke detector's encoder
SMOKE_VIT = {"dim": 32, "depth": 4, "patch": 8, "grid": 4, "heads": 2}


@pytest.fixture()
def mae_file(tmp_path):
    path = tmp_path / "mine.pth"
    torch.save(fakes.mae(**SMOKE_VIT), path)
    return path


def test_parse_spec():
    assert parse_spec("a=/x/y.pth:mae") == ("a", "/x/y.pth", "mae")
    assert parse_spec("a=/x/y.pth") == ("a", "/x/y.pth", "auto")
    assert parse_spec("a=/x:v2/y.pth") == ("a", "/x:v2/y.pth", "auto")
    for bad in ("noequals", "=x.pth", "a b=x.pth", "a="):
        with pytest.raises(ConfigError, match="--add-init"):
            parse_spec(bad)


def test_new_init_joins_t1_f2_and_sweeps(mae_file):
    lines = []
    profile = load_benchmark_profile("smoke", [f"mine={mae_file}:auto"], echo=lines.append)
    assert "auto-detected layout mae" in lines[0] and "no classifier head" in lines[0]
    src = profile.inits["mine"]
    assert src.kind == "mae" and src.checkpoint == str(mae_file) and src.pretrain_run is None
    runs = {r.name: r for r in expand_runs(profile)}
    mine = runs["ft-S-mine-ep1-s0"]
    assert {"T1", "F2"} <= set(mine.serves) and mine.needs == ("hp-S-mine",)  # tuned first
    assert (mine.parameters["init_kind"] == "mae"
            and mine.parameters["init_checkpoint"] == str(mae_file))
    assert "mine" in profile.sweeps[0].inits
    assert "mine" not in load_profile("smoke").inits  # the shipped profile is not changed


def test_paper_profile_per_size_files_and_all_comparisons(tmp_path):
    for size in ("B", "L"):
        (tmp_path / size).mkdir()
        torch.save(fakes.beit(**SMOKE_VIT), tmp_path / size / "b.pth")
    spec = f"mybeit={tmp_path}/{{size}}/b.pth:beit"
    profile = add_inits(load_profile("paper"), [spec], echo=lambda _: None)
    assert profile.inits["mybeit"].overrides == ["model.backbone.layer_scale_init=0.1"]
    runs = {r.name: r for r in expand_runs(profile)}
    assert {"ft-B-mybeit-ep100-s0", "ft-L-mybeit-ep25-s2"} <= set(runs)
    assert runs["ft-L-mybeit-ep100-s0"].parameters["init_checkpoint"] == f"{tmp_path}/L/b.pth"
    assert not any(n.startswith("f3-") and "mybeit" in n for n in runs)
    # the random-init sweep keeps its own protocol; the pre-trained inits' sweep gets the new one
    assert [("mybeit" in s.inits) for s in profile.sweeps] == [True, False]
    wide = add_inits(load_profile("paper"), [spec], all_comparisons=True, echo=lambda _: None)
    assert "f3-L-mybeit-ep100-s0" in {r.name for r in expand_runs(wide)}


def test_bad_specs_name_the_spec(mae_file, tmp_path):
    smoke = load_profile("smoke")
    cases = [
        (f"mine={mae_file}:dino", "unknown checkpoint layout 'dino'"),
        (f"mine={tmp_path}/nope.pth", "not found"),
        (f"mae={mae_file}", "already has an init named 'mae'"),
        (f"mine={mae_file}:beit", "is in the mae layout"),
    ]
    for spec, message in cases:
        with pytest.raises(ConfigError, match="--add-init") as err:
            add_inits(smoke, [spec], echo=lambda _: None)
        assert message in str(err.value) and spec in str(err.value)
    (tmp_path / "empty.pth").write_bytes(b"")
    with pytest.raises(ConfigError, match="--add-init 'e=.*empty.pth'.*empty file"):
        add_inits(smoke, [f"e={tmp_path / 'empty.pth'}"], echo=lambda _: None)
    d2 = tmp_path / "d2.pth"
    torch.save({"model": {f"backbone.net.{k}": v for k, v in fakes.encoder(32, 4, 8).items()}}, d2)
    with pytest.raises(ConfigError, match="detectron2 ViTDet checkpoints .* are not converted"):
        add_inits(smoke, [f"d2={d2}"], echo=lambda _: None)
    assert add_inits(smoke, [f"mine={mae_file}:timm"], echo=lambda _: None).inits["mine"].kind \
        == "supervised"  # same reader: the stated layout decides the kind
