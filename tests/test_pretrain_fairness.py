"""Pre-training fairness: BEiT's jitter, MoCo v3's contrastive batch, the supervised label set,
and BEiT pre-trained with absolute position embeddings (converted like any BEiT file)."""
import pytest
import torch
from pretrain_tiny import one_thread, tiny_cfg, train_images  # noqa: F401 (autouse fixture)

from vitdet_lib.checkpoint import InitConfig, initialize_backbone
from vitdet_lib.config import ConfigError, vit_config
from vitdet_lib.model.vit import ViT
from vitdet_lib.pretrain.augment import brightness_contrast
from vitdet_lib.pretrain.config import IMAGENET_MEAN, IMAGENET_STD
from vitdet_lib.pretrain.data import load_eval_images
from vitdet_lib.pretrain.evaluate import classifier_top1, evaluate_method
from vitdet_lib.pretrain.methods import build_method
from vitdet_lib.pretrain.methods.mocov3 import check_contrastive_batch
from vitdet_lib.pretrain.methods.supervised import pretrain_labels


def _grey(x: torch.Tensor) -> torch.Tensor:
    """Normalised [B, 3, H, W] back to grey [B, 1, H, W] in [0, 1] (channel 0)."""
    return x[:, :1] * IMAGENET_STD[0] + IMAGENET_MEAN[0]


def test_brightness_contrast_values():
    torch.manual_seed(0)
    x = torch.rand(64, 1, 8, 8) * 0.5 + 0.25  # [0.25, 0.75]: no clamping at strength 0.3
    y = brightness_contrast(x, 0.3, 0.0)
    ratio = (y / x).flatten(1)
    # brightness: one factor per image, in 1 +- 0.3, and different images get different ones
    torch.testing.assert_close(ratio.amin(1), ratio.amax(1))
    assert ratio.amin() >= 0.7 - 1e-6 and ratio.amax() <= 1.3 + 1e-6 and ratio[:, 0].std() > 0.1
    z = brightness_contrast(x, 0.0, 0.3)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    torch.testing.assert_close(z.mean(dim=(1, 2, 3), keepdim=True), mean)  # contrast keeps it
    scale = ((z - mean) / (x - mean)).flatten(1)
    torch.testing.assert_close(scale.amin(1), scale.amax(1), atol=1e-4, rtol=1e-4)
    assert scale.amin() >= 0.7 - 1e-4 and scale.amax() <= 1.3 + 1e-4
    torch.testing.assert_close(brightness_contrast(x, 0.3, 0.3, prob=0.0), x)


def _beit(**beit):
    method = build_method(tiny_cfg("beit", beit=beit))
    method.tokenizer = _BrightnessTokens()
    return method


class _BrightnessTokens:
    """A stand-in tokenizer whose ids are each 8x8 patch's mean grey level in 32 steps (a
    trained dVAE may be nearly invariant to a brightness change; this one is not)."""

    def tokenize(self, grey: torch.Tensor) -> torch.Tensor:
        patches = torch.nn.functional.avg_pool2d(grey, 8).flatten(1)  # [B, grid*grid]
        return (patches * 31.999).long()


def test_beit_views_are_jittered_and_tokenized_after_jitter():
    images, _ = train_images(256)
    plain, jittered = _beit(brightness=0.0, contrast=0.0), _beit(brightness=0.4, contrast=0.0)
    torch.manual_seed(3)
    a = plain.make_batch(images[:32], None, torch.device("cpu"))
    torch.manual_seed(3)
    b = jittered.make_batch(images[:32], None, torch.device("cpu"))  # same crops, then jitter
    ga, gb = _grey(a["images"]), _grey(b["images"])
    lit = (ga > 0.2) & (gb < 0.99)  # pixels that neither the jitter nor black clamps
    ratios = [float((gb[i][lit[i]] / ga[i][lit[i]]).median()) for i in range(32)]
    assert all(0.6 - 1e-3 <= r <= 1.4 + 1e-3 for r in ratios)
    assert max(abs(r - 1) for r in ratios) > 0.15  # the jitter is on, per image
    # the tokenizer's targets come from the jittered view the ViT sees
    tokens = jittered.tokenizer.tokenize(gb.clamp(0, 1))
    assert torch.equal(b["token_ids"], tokens)
    assert not torch.equal(tokens, jittered.tokenizer.tokenize(ga.clamp(0, 1)))


def test_mocov3_refuses_accumulation_unless_keys_are_gathered():
    with pytest.raises(ConfigError, match=r"train\.batch_per_device=64 x 1 process\(es\) = 64 "
                       r".*train\.batch_size=256.*batch_per_device=256.*run 4 processes"):
        check_contrastive_batch(256, 64, 1)
    check_contrastive_batch(256, 128, 2)  # 2 processes x 128, keys all_gathered: one batch
    check_contrastive_batch(256, 256, 1)
    images, labels = train_images(256)
    moco = build_method(tiny_cfg("mocov3", train={"batch_size": 32, "batch_per_device": 16}))
    with pytest.raises(ConfigError, match="batch_per_device=16"):
        moco.make_batch(images[:16], labels[:16], torch.device("cpu"))
    whole = build_method(tiny_cfg("mocov3"))
    assert whole.make_batch(images[:32], labels[:32], torch.device("cpu"))["x1"].shape[0] == 32


def test_supervised_coarse_labels_are_not_the_detection_classes():
    fine = torch.arange(10)
    # T-shirt, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot
    assert pretrain_labels(fine, "coarse4").tolist() == [0, 1, 0, 1, 0, 2, 0, 2, 3, 2]
    assert torch.equal(pretrain_labels(fine, "fashion10"), fine)
    with pytest.raises(ConfigError, match="supervised.num_classes=4"):
        build_method(tiny_cfg("supervised", supervised={"labels": "coarse4"}))
    method = build_method(tiny_cfg("supervised", supervised={"labels": "coarse4",
                                                             "num_classes": 4}))
    assert method.net.head.out_features == 4
    images, labels = train_images(256)
    batch = method.make_batch(images[:32], labels[:32], torch.device("cpu"))
    assert batch["targets"].shape == (32, 4)
    assert torch.equal(batch["targets"].argmax(1), pretrain_labels(labels[:32], "coarse4"))
    assert torch.equal(batch["labels"], pretrain_labels(labels[:32], "coarse4"))
    # the classifier's own top-1 is scored against the same 4 groups
    cfg = method.cfg
    result = evaluate_method(method, cfg, random_baseline=False)
    test, test_labels = load_eval_images("test", None)
    expected = classifier_top1(method.encoder(), test, pretrain_labels(test_labels, "coarse4"),
                               img_size=32, pixel_mean=IMAGENET_MEAN, pixel_std=IMAGENET_STD)
    assert result["trained"]["classifier_top1_test10k"] == expected


@pytest.mark.parametrize("position, has_abs, has_rel", [("rel", False, True), ("abs", True, False),
                                                       ("both", True, True)])
def test_beit_position_options_set_the_checkpoint_keys(position, has_abs, has_rel):
    state = build_method(tiny_cfg("beit", beit={"position": position})).official_state()
    assert ("pos_embed" in state) == has_abs
    assert ("rel_pos_bias.relative_position_bias_table" in state) == has_rel
    if has_abs:
        assert state["pos_embed"].shape == (1, 1 + 16, 64) and state["pos_embed"].std() > 0.005


def test_beit_with_abs_pos_converts_with_its_embeddings():
    torch.manual_seed(0)
    method = build_method(tiny_cfg("beit", beit={"position": "abs"}))
    images = torch.randn(2, 3, 32, 32)
    mask = torch.zeros(2, 16, dtype=torch.bool)
    before = method.net.forward_features(images, mask)
    with torch.no_grad():
        method.net.pos_embed.add_(1.0)
    assert not torch.allclose(before, method.net.forward_features(images, mask))  # it is used
    ck = method.official_checkpoint()
    vit = ViT(vit_config("mini", embed_dim=64, depth=4, num_heads=2, pretrain_img_size=32,
                         layer_scale_init=0.1), img_size=32)
    report = initialize_backbone(vit, InitConfig(kind="beit", checkpoint="<in memory>",
                                                 rel_pos_init="zero",
                                                 abs_pos_init="pretrained"), checkpoint=ck)
    assert report.loaded["pos_embed"] == "pos_embed"
    expected = ck["model"]["pos_embed"][:, 1:].reshape(1, 4, 4, 64)  # class row dropped
    torch.testing.assert_close(vit.pos_embed.detach(), expected)
    torch.testing.assert_close(vit.blocks[0].attn.qkv.bias.detach()[:64],
                               ck["model"]["blocks.0.attn.q_bias"])
