"""Pre-training building blocks: position tables, masks, tokenizer, config, evaluation."""
from pathlib import Path

import pytest
import torch
from pretrain_tiny import one_thread, tiny_cfg, train_images  # noqa: F401 (fixture)

from vitdet_lib.config import ConfigError
from vitdet_lib.model.pos import rel_pos_bias, sincos_pos_embed
from vitdet_lib.pretrain.augment import crop_flip_matrix, gaussian_blur, rand_augment, resize, warp
from vitdet_lib.pretrain.config import TokenizerConfig, load_pretrain_config
from vitdet_lib.pretrain.encoder import PosEmbedKind, RelativePositionBias, sincos_2d_pos_embed
from vitdet_lib.pretrain.evaluate import (
    knn_accuracy,
    knn_classify,
    linear_probe_accuracy,
    mae_reconstruction_figure,
)
from vitdet_lib.pretrain.masking import blockwise_mask, blockwise_masks, random_masking
from vitdet_lib.pretrain.methods import build_method, patchify, unpatchify
from vitdet_lib.pretrain.tokenizer import load_tokenizer, save_tokenizer, train_tokenizer

PARAMS = Path(__file__).resolve().parents[1] / "params"  # whatever the working directory


def test_sincos_layouts_mae_and_mocov3():
    dim, grid = 16, 4
    mae = sincos_2d_pos_embed(dim, grid, PosEmbedKind.SINCOS_MAE)
    moco = sincos_2d_pos_embed(dim, grid, PosEmbedKind.SINCOS_MOCOV3)
    assert mae.shape == moco.shape == (1, 1 + grid * grid, dim)
    assert torch.equal(mae[0, 0], torch.zeros(dim)) and torch.equal(moco[0, 0], torch.zeros(dim))
    torch.testing.assert_close(mae[0, 1:], sincos_pos_embed(dim, grid))  # the library's MAE one
    # same halves, swapped: MAE encodes the column first, MoCo v3 the row
    torch.testing.assert_close(moco[0, 1:],
                               torch.cat([mae[0, 1:, dim // 2:], mae[0, 1:, :dim // 2]], 1))
    token = 1 + 1 * grid + 0  # row 1, column 0; channel 0 is sin(coordinate * 1)
    assert moco[0, token, 0] == pytest.approx(torch.sin(torch.tensor(1.0)).item())
    assert mae[0, token, 0] == pytest.approx(0.0)


def test_beit_relative_index_matches_the_library_bias():
    grid, heads = 4, 2
    rpb = RelativePositionBias(grid, heads)
    with torch.no_grad():
        rpb.relative_position_bias_table.normal_()
    table = rpb.relative_position_bias_table
    bias = rpb()  # [heads, 1+N, 1+N]
    assert bias.shape == (heads, 1 + grid ** 2, 1 + grid ** 2)
    torch.testing.assert_close(bias[:, 1:, 1:], rel_pos_bias(table[:-3], (grid, grid)))
    assert torch.equal(bias[:, 0, 1], table[-3]) and torch.equal(bias[:, 1, 0], table[-2])
    assert torch.equal(bias[:, 0, 0], table[-1])


def test_random_masking_keeps_a_quarter_and_restores_order():
    ids_keep, mask, ids_restore = random_masking(3, 16, 0.75)
    assert ids_keep.shape == (3, 4) and mask.sum(dim=1).tolist() == [12.0] * 3
    for b in range(3):
        assert mask[b, ids_keep[b]].sum() == 0  # kept patches are the unmasked ones
    shuffled = torch.arange(16).expand(3, -1).gather(1, ids_restore.argsort(dim=1))
    assert torch.equal(shuffled.gather(1, ids_restore), torch.arange(16).expand(3, -1))


def test_blockwise_masking_is_blocky_and_near_the_ratio():
    masks = blockwise_masks(64, 8, 0.4, min_block=4)
    assert masks.shape == (64, 64) and masks.dtype == torch.bool
    per_image = masks.sum(dim=1).float()
    assert per_image.max() <= 26 and 0.3 < per_image.mean() / 64 <= 0.41
    m = blockwise_mask(8, 26, 4).float()
    # blocks, not salt-and-pepper: most masked patches have a masked 4-neighbour
    nb = torch.zeros_like(m)
    nb[1:] += m[:-1]
    nb[:-1] += m[1:]
    nb[:, 1:] += m[:, :-1]
    nb[:, :-1] += m[:, 1:]
    assert ((nb > 0) & (m > 0)).sum() >= 0.8 * m.sum()


def test_tokenizer_gives_valid_ids_and_round_trips(tmp_path):
    images, _ = train_images(256)
    cfg = TokenizerConfig(vocab_size=32, hidden=16, steps=20, batch_size=32, lr=3e-3)
    vae, stats = train_tokenizer(images, cfg, img_size=32, patch_size=8, crop_scale=(0.5, 1.0))
    grey = resize(images[:10], 32)
    ids = vae.tokenize(grey)
    assert ids.shape == (10, 16) and ids.dtype == torch.long
    assert int(ids.min()) >= 0 and int(ids.max()) < 32
    assert 1 <= stats["codes_used"] <= 32 and stats["recon_mse_hard"] >= 0
    assert vae.reconstruct(ids).shape == (10, 1, 16, 16)  # 4 pixels per token
    save_tokenizer(vae, str(tmp_path / "tok.pth"), stats)
    again, stats2 = load_tokenizer(str(tmp_path / "tok.pth"))
    assert torch.equal(again.tokenize(grey), ids) and stats2 == stats


def test_augmentations_shapes_and_range():
    images, _ = train_images(256)
    x = warp(images[:8], crop_flip_matrix(8, (0.3, 1.0)), 64)
    assert x.shape == (8, 1, 64, 64) and 0 <= float(x.min()) and float(x.max()) <= 1
    y = rand_augment(images[:8], crop_flip_matrix(8, (0.3, 1.0)), 64, 2, 9)
    assert y.shape == (8, 1, 64, 64) and 0 <= float(y.min()) and float(y.max()) <= 1
    # the un-augmented view is bilinear upsampling (black beyond the border); blur with
    # probability 0 changes nothing
    plain = torch.nn.functional.interpolate(images[:8, None].float() / 255, size=(64, 64),
                                            mode="bilinear", align_corners=False)
    torch.testing.assert_close(resize(images[:8], 64)[..., 2:-2, 2:-2], plain[..., 2:-2, 2:-2])
    torch.testing.assert_close(gaussian_blur(x, (0.5, 1.0), 0.0), x)


def test_patchify_round_trip():
    x = torch.randn(2, 3, 32, 32)
    p = patchify(x, 8)
    assert p.shape == (2, 16, 192)
    torch.testing.assert_close(p[0, 1], x[0, :, 0:8, 8:16].permute(1, 2, 0).reshape(-1))
    torch.testing.assert_close(unpatchify(p, 8), x)


def test_config_is_strict(tmp_path):
    with pytest.raises(ConfigError, match="lr_rate"):
        load_pretrain_config({"method": "mae", "train": {"lr_rate": 1.0}})
    with pytest.raises(ConfigError, match="another method"):
        load_pretrain_config({"method": "mae", "mocov3": {"temperature": 0.2}})
    with pytest.raises(ConfigError, match="warmup_epochs"):
        load_pretrain_config(PARAMS / "pretrain_mae.yaml", ["train.epochs=2"])  # warmup 5
    with pytest.raises(ConfigError, match="save_epochs"):
        load_pretrain_config({"method": "mae", "train": {"epochs": 2, "save_epochs": [3]}})
    for method in ("supervised", "mocov3", "beit", "mae"):  # the shipped params files load
        cfg = load_pretrain_config(PARAMS / f"pretrain_{method}.yaml")
        assert cfg.method.value == method and cfg.encoder.vit().embed_dim == 192


def test_knn_and_probe_on_separable_features():
    labels = torch.arange(10).repeat_interleave(20)
    feats = torch.nn.functional.one_hot(labels, 10).float() + 0.05 * torch.randn(200, 10)
    assert torch.equal(knn_classify(feats, labels, feats, k=5), labels)
    assert linear_probe_accuracy(feats, labels, feats, labels, epochs=20, batch_size=50) == 1.0


def test_knn_accuracy_and_mae_figure_run(tmp_path):
    cfg = tiny_cfg("mae")
    method = build_method(cfg)
    images, labels = train_images(256)
    kw = {"img_size": 32, "pixel_mean": cfg.data.pixel_mean, "pixel_std": cfg.data.pixel_std}
    acc = knn_accuracy(method.encoder(), train_images=images[:200], train_labels=labels[:200],
                       test_images=images[200:], test_labels=labels[200:], k=5, **kw)
    assert acc * 56 == pytest.approx(round(acc * 56))  # a fraction of the 56 test images
    # queries that are the bank itself: each one's nearest neighbour is its own image
    same = {"train_images": images[:60], "train_labels": labels[:60], "test_images": images[:60]}
    assert knn_accuracy(method.encoder(), **same, test_labels=labels[:60], k=1, **kw) == 1.0
    wrong = (labels[:60] + 1) % 10
    assert knn_accuracy(method.encoder(), **same, test_labels=wrong, k=1, **kw) == 0.0
    path = mae_reconstruction_figure(method.net, images[:4], tmp_path / "rec.png",
                                     pixel_mean=cfg.data.pixel_mean, pixel_std=cfg.data.pixel_std)
    assert path.is_file() and path.read_bytes()[:4] == b"\x89PNG"
