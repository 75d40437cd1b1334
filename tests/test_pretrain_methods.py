"""Each pre-training method learns, and saves its checkpoint in its official layout."""
import pytest
import torch
from pretrain_tiny import (  # noqa: F401 (one_thread: an autouse fixture)
    METHODS,
    TINY_ENCODER,
    one_thread,
    one_thread_only,
    tiny_cfg,
    train_images,
)

from vitdet_lib.pretrain.engine import epoch_checkpoint_name, pretrain, pretrain_param_groups
from vitdet_lib.pretrain.methods import build_method

DEPTH, DIM, HEADS = TINY_ENCODER["depth"], TINY_ENCODER["embed_dim"], TINY_ENCODER["num_heads"]
GRID = TINY_ENCODER["img_size"] // 8
N = GRID * GRID
TIMM_BLOCK = ("norm1.weight", "norm1.bias", "attn.qkv.weight", "attn.qkv.bias", "attn.proj.weight",
              "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight", "mlp.fc1.bias",
              "mlp.fc2.weight", "mlp.fc2.bias")
BEIT_BLOCK = ("norm1.weight", "norm1.bias", "attn.q_bias", "attn.v_bias", "attn.qkv.weight",
              "attn.proj.weight", "attn.proj.bias", "norm2.weight", "norm2.bias", "mlp.fc1.weight",
              "mlp.fc1.bias", "mlp.fc2.weight", "mlp.fc2.bias", "gamma_1", "gamma_2")
BN = ("weight", "bias", "running_mean", "running_var", "num_batches_tracked")
BN_NOAFFINE = ("running_mean", "running_var", "num_batches_tracked")


def _blocks(prefix, names, depth=DEPTH):
    return {f"{prefix}{i}.{n}" for i in range(depth) for n in names}


def _timm_encoder(prefix=""):
    keys = {"cls_token", "pos_embed", "patch_embed.proj.weight", "patch_embed.proj.bias",
            "norm.weight", "norm.bias"} | _blocks("blocks.", TIMM_BLOCK)
    return {prefix + k for k in keys}


def _moco_projector(prefix):
    keys = {"head.0.weight", "head.3.weight", "head.6.weight"}
    keys |= {f"head.1.{n}" for n in BN} | {f"head.4.{n}" for n in BN}
    keys |= {f"head.7.{n}" for n in BN_NOAFFINE}
    return {prefix + k for k in keys}


def expected_keys(method: str, decoder_depth: int = 2) -> tuple[str, set[str]]:
    """The official file's wrapper key and weight names (DeiT, MoCo v3, BEiT, MAE)."""
    if method == "supervised":
        return "model", _timm_encoder() | {"head.weight", "head.bias"}
    if method == "mocov3":
        keys = set()
        for enc in ("module.base_encoder.", "module.momentum_encoder."):
            keys |= _timm_encoder(enc) | _moco_projector(enc)
        keys |= {"module.predictor.0.weight", "module.predictor.3.weight"}
        keys |= {f"module.predictor.1.{n}" for n in BN}  # no BN after the predictor's last layer
        return "state_dict", keys
    if method == "beit":
        return "model", ({"cls_token", "mask_token", "patch_embed.proj.weight",
                          "patch_embed.proj.bias", "rel_pos_bias.relative_position_bias_table",
                          "rel_pos_bias.relative_position_index", "norm.weight", "norm.bias",
                          "lm_head.weight", "lm_head.bias"} | _blocks("blocks.", BEIT_BLOCK))
    assert method == "mae"
    return "model", (_timm_encoder() | {"mask_token", "decoder_pos_embed", "decoder_embed.weight",
                                        "decoder_embed.bias", "decoder_norm.weight",
                                        "decoder_norm.bias", "decoder_pred.weight",
                                        "decoder_pred.bias"}
                     | _blocks("decoder_blocks.", TIMM_BLOCK, decoder_depth))


STEPS = 32  # 16 epochs of 64 images at batch 32


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """Each method trained on 64 images for 32 steps, with its records."""
    images, labels = train_images(256)
    images, labels = images[:64], labels[:64]
    runs = {}
    with one_thread_only():
        for method in METHODS:
            out = tmp_path_factory.mktemp(method)
            records = []
            torch.manual_seed(0)
            cfg = tiny_cfg(method, train={"save_epochs": [8, 16], "epochs": 16})
            pretrain(cfg, out, images=images, labels=labels, echo=records.append)
            runs[method] = (cfg, out, records)
    return runs


@pytest.mark.parametrize("method", METHODS)
def test_loss_falls(trained, method):
    _, _, records = trained[method]
    losses = [r["loss"] for r in records if r["type"] == "step"]
    assert len(losses) == STEPS
    q = STEPS // 4
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    # supervised and MoCo v3 fall least (~11% here); the masked-modelling losses fall by ~half
    assert last < 0.95 * first, (method, losses)


@pytest.mark.parametrize("method", METHODS)
def test_checkpoints_have_the_official_layout(trained, method):
    cfg, out, records = trained[method]
    wrapper, keys = expected_keys(method)
    for name in (epoch_checkpoint_name(8), epoch_checkpoint_name(16), "last.pth"):
        obj = torch.load(out / name, map_location="cpu", weights_only=True)
        assert set(obj[wrapper]) == keys, (name, set(obj[wrapper]) ^ keys)
    state = obj[wrapper]
    prefix = "module.base_encoder." if method == "mocov3" else ""
    assert state[prefix + "cls_token"].shape == (1, 1, DIM)
    assert state[prefix + "patch_embed.proj.weight"].shape == (DIM, 3, 8, 8)
    if method == "beit":
        assert (state["rel_pos_bias.relative_position_bias_table"].shape
                == ((2 * GRID - 1) ** 2 + 3, HEADS))
        assert state["rel_pos_bias.relative_position_index"].shape == (N + 1, N + 1)
        assert state["lm_head.weight"].shape == (cfg.beit.tokenizer.vocab_size, DIM)
        torch.testing.assert_close(state["blocks.0.attn.qkv.weight"].shape, (3 * DIM, DIM))
    else:
        assert state[prefix + "pos_embed"].shape == (1, 1 + N, DIM)
    if method in ("mocov3", "mae"):  # fixed sin-cos tables: stored, untrained, zero class row
        assert torch.equal(state[prefix + "pos_embed"][0, 0], torch.zeros(DIM))
        fresh = build_method(cfg).official_state()
        assert torch.equal(state[prefix + "pos_embed"], fresh[prefix + "pos_embed"])
    if method == "mae":
        assert state["decoder_pos_embed"].shape == (1, 1 + N, cfg.mae.decoder_embed_dim)
        assert state["mask_token"].shape == (1, 1, cfg.mae.decoder_embed_dim)
    # the epoch files hold no training state; last.pth holds what a resume needs
    small = torch.load(out / epoch_checkpoint_name(8), map_location="cpu", weights_only=True)
    assert {"optimizer", "rng"}.isdisjoint(small) and small["epoch"] == 8.0
    assert {"optimizer", "schedule", "rng", "step"} <= set(obj) and obj["step"] == STEPS
    epochs = [r for r in records if r["type"] == "epoch"]
    assert ([e["epoch"] for e in epochs] == list(range(1, 17))
            and all(e["wall_s"] > 0 for e in epochs))
    assert sorted(p.name for p in out.glob("checkpoint-*.pth")) == ["checkpoint-16.pth",
                                                                    "checkpoint-8.pth"]
    assert (out / "log.jsonl").is_file() and (out / "config.yaml").is_file()


def test_weight_decay_exemptions():
    method = build_method(tiny_cfg("beit"))
    groups = {g["group"]: set(g["param_names"]) for g in pretrain_param_groups(method.net, 0.05)}
    assert {"cls_token", "mask_token", "rel_pos_bias.relative_position_bias_table",
            "blocks.0.attn.q_bias", "blocks.0.gamma_1", "norm.weight"} <= groups["no_decay"]
    assert {"blocks.0.attn.qkv.weight", "lm_head.weight"} <= groups["decay"]
    moco = build_method(tiny_cfg("mocov3"))
    names = {n for g in pretrain_param_groups(moco.net, 0.1) for n in g["param_names"]}
    # frozen: the momentum encoder, the fixed sin-cos table and the random patch projection
    assert not any(n.startswith("momentum_encoder.") for n in names)
    assert "base_encoder.pos_embed" not in names
    assert "base_encoder.patch_embed.proj.weight" not in names


def test_mocov3_momentum_schedule_and_update():
    method = build_method(tiny_cfg("mocov3"))
    assert method.momentum_at(0.0) == pytest.approx(0.99)
    assert method.momentum_at(1.0) == pytest.approx(1.0)
    net = method.net
    with torch.no_grad():
        net.base_encoder.norm.weight.add_(1.0)
    before = net.momentum_encoder.norm.weight.clone()
    method.on_step_end(0.0)  # m = 0.99
    torch.testing.assert_close(net.momentum_encoder.norm.weight, before + 0.01)
