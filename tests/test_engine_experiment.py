"""Experiment params files: base merging, strictness, overrides, round trip."""
from pathlib import Path

import pytest

from vitdet_lib.config import ConfigError
from vitdet_lib.experiment import AmpMode, GeneratedKind, load_experiment, save_experiment

REPO = Path(__file__).resolve().parents[1]


def _write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_base_merges_recursively_and_delta_wins(tmp_path):
    _write(tmp_path / "base.yaml", """
data: {generated: {kind: shapes, num_train: 8, image_size: 64}}
train: {lr: 1.0e-4, batch_size: 8, eval_at: [0.5, 1.0]}
model: {backbone: {depth: 4, embed_dim: 32}}
""")
    child = _write(tmp_path / "sub" / "child.yaml", """
base: ../base.yaml
train: {lr: 2.0e-4, amp: bf16}
model: {backbone: {embed_dim: 48}}
""")
    cfg = load_experiment(child)
    assert cfg.train.lr == 2.0e-4 and cfg.train.batch_size == 8  # merged key by key
    assert cfg.train.amp is AmpMode.BF16 and cfg.train.eval_at == (0.5, 1.0)
    assert cfg.model.backbone.depth == 4 and cfg.model.backbone.embed_dim == 48
    assert cfg.data.generated.kind is GeneratedKind.SHAPES and cfg.data.generated.num_train == 8
    assert cfg.output_dir == str(Path("work_dirs") / "child")


def test_unknown_key_names_file_and_key_path(tmp_path):
    _write(tmp_path / "base.yaml", "data: {generated: {kind: shapes}}\ntrain: {lr_rate: 1}\n")
    child = _write(tmp_path / "child.yaml", "base: base.yaml\ntrain: {lr: 1.0e-4}\n")
    with pytest.raises(ConfigError) as err:
        load_experiment(child)
    msg = str(err.value)
    assert str(tmp_path / "base.yaml") in msg and "train" in msg and "lr_rate" in msg
    # nested: the full path through sections
    bad = _write(tmp_path / "bad.yaml", "model: {backbone: {windw_size: 4}}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*model\.backbone.*windw_size"):
        load_experiment(bad)


def test_overrides_are_typed_and_strict(tmp_path):
    path = _write(tmp_path / "p.yaml", "data: {generated: {}}\n")
    cfg = load_experiment(path, ["train.lr=3e-4", "train.eval_at=[0.25,1.0]", "output_dir=x"])
    assert cfg.train.lr == 3e-4 and cfg.train.eval_at == (0.25, 1.0) and cfg.output_dir == "x"
    with pytest.raises(ConfigError, match=r"--set.*train.*nope"):
        load_experiment(path, ["train.nope=1"])


def test_cross_field_checks(tmp_path):
    with pytest.raises(ConfigError, match="either"):
        load_experiment({})  # no data source
    with pytest.raises(ConfigError, match="multiple of batch_per_device"):
        load_experiment({"data": {"generated": {}}, "train": {"batch_size": 6,
                                                             "batch_per_device": 4}})
    # one place for the drop-path rate: the old training key says where it went
    with pytest.raises(ConfigError, match=r"train\.drop_path: .*model\.backbone\.drop_path_rate"):
        load_experiment({"data": {"generated": {}}}, ["train.drop_path=0.2"])
    with pytest.raises(ConfigError, match=r"x\.yaml: params\.train\.drop_path: this key moved"):
        load_experiment(_write(tmp_path / "x.yaml", "train: {drop_path: 0.1}\n"))
    cyc = _write(tmp_path / "a.yaml", "base: a.yaml\n")
    with pytest.raises(ConfigError, match="cycle"):
        load_experiment(cyc)


def test_save_round_trip(tmp_path):
    cfg = load_experiment(REPO / "params" / "smoke_shapes.yaml",
                          ["model.backbone.drop_path_rate=0.2"])
    save_experiment(cfg, tmp_path / "saved.yaml")
    assert load_experiment(tmp_path / "saved.yaml") == cfg


@pytest.mark.parametrize("name", ["base_mini.yaml", "smoke_shapes.yaml"])
def test_shipped_params_load(name):
    cfg = load_experiment(REPO / "params" / name)
    assert cfg.data.generated is not None


def test_named_size_expands_beneath_the_keys_given(tmp_path):
    from vitdet_lib.config import VIT_SIZES

    mini = load_experiment(REPO / "params" / "base_mini.yaml").model.backbone
    assert {k: getattr(mini, k) for k in VIT_SIZES["mini"]} == VIT_SIZES["mini"]
    smoke = load_experiment(REPO / "params" / "smoke_shapes.yaml").model.backbone
    assert (smoke.patch_size, smoke.embed_dim, smoke.depth) == (8, 32, 4)  # given keys win
    base = load_experiment(REPO / "params" / "smoke_shapes.yaml", ["model.backbone.size=base",
                                                                   "model.backbone.depth=12"])
    b = base.model.backbone
    assert (b.patch_size, b.embed_dim, b.depth) == (16, 32, 12)  # preset, file, override
    with pytest.raises(ConfigError, match=r"model\.backbone\.size: unknown ViT size 'huge'"):
        load_experiment(REPO / "params" / "smoke_shapes.yaml", ["model.backbone.size=huge"])


def test_pretrain_params_use_the_same_loader(tmp_path):
    from vitdet_lib.pretrain.config import load_pretrain_config

    _write(tmp_path / "child.yaml", f"base: {REPO / 'params' / 'pretrain_mae.yaml'}\n"
                                    "train: {epochs: 150, lr: 3e-4}\n")
    cfg = load_pretrain_config(tmp_path / "child.yaml", ["train.warmup_epochs=1e0"])
    ref = load_pretrain_config(REPO / "params" / "pretrain_mae.yaml")
    assert (cfg.train.epochs, cfg.train.lr, cfg.train.warmup_epochs) == (150, 3e-4, 1.0)
    assert cfg.mae == ref.mae and cfg.encoder == ref.encoder  # the rest from the base
    _write(tmp_path / "bad.yaml", "base: child.yaml\ntrain: {lr_rate: 1.0}\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml: params\.train: unknown key.*lr_rate"):
        load_pretrain_config(tmp_path / "bad.yaml")


def test_resume_rules_most_specific_prefix_wins():
    from vitdet_lib.engine.trainer import FINETUNE_RESUME_RULES as rules

    assert rules.kind("model.backbone.depth") == "refused"
    assert rules.kind("model.backbone.drop_path_rate") == "guarded"
    assert rules.kind("train.lr") == "guarded"
    assert rules.kind("train.log_every") == "free"
    assert rules.kind("eval.max_images") == "free"
