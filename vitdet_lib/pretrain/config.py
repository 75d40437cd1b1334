"""One pre-training run as data: method, encoder size, data subset, schedule, method recipe.

A params file (``params/pretrain_<method>.yaml``) is loaded by the same loader as every params
file (``config.load_params``: ``base:`` links, strict per-file checks naming the file and key
path, ``--set`` overrides) and may hold the recipe section of its own method only, so a
``mocov3.temperature`` in an MAE file is an error, not a silently ignored value.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..config import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ConfigError,
    ViTConfig,
    from_dict,
    load_params,
    vit_config,
)
from ..experiment import TrainBase, validate_train_base


class Method(str, enum.Enum):
    SUPERVISED = "supervised"  # DeiT recipe, scaled down
    MOCOV3 = "mocov3"
    BEIT = "beit"
    MAE = "mae"


@dataclass
class EncoderConfig:
    """The ViT being pre-trained: a named size (``config.VIT_SIZES``) plus overrides.

    Args:
        size: ``mini`` for the miniature study; ``tiny/small/base/large`` exist too.
        patch_size, embed_dim, depth, num_heads, mlp_ratio, img_size: override the size's values
            when set (``img_size`` is the size's ``pretrain_img_size``).
        drop_path_rate: stochastic depth of the last block (linear from 0); the recipes differ
            (DeiT/BEiT 0.1, MoCo v3/MAE 0), so every params file states it.
    """

    size: str = "mini"
    patch_size: int | None = None
    embed_dim: int | None = None
    depth: int | None = None
    num_heads: int | None = None
    mlp_ratio: float | None = None
    img_size: int | None = None
    drop_path_rate: float = 0.0

    def vit(self) -> ViTConfig:
        given = {"patch_size": self.patch_size, "embed_dim": self.embed_dim, "depth": self.depth,
                 "num_heads": self.num_heads, "mlp_ratio": self.mlp_ratio,
                 "pretrain_img_size": self.img_size}
        over = {k: v for k, v in given.items() if v is not None}
        return vit_config(self.size, drop_path_rate=self.drop_path_rate, **over)


@dataclass
class PretrainDataConfig:
    """Fashion-MNIST train split, upsampled to the encoder's ``img_size`` and made 3-channel.

    Args:
        num_images: a seeded random subset of the 60k train images (None = all).
        root: directory of the idx files (None = ``$VITDET_FASHION_MNIST_DIR`` or Debian's).
        pixel_mean, pixel_std: normalisation after scaling to [0, 1].
    """

    num_images: int | None = None
    root: str | None = None
    pixel_mean: tuple[float, float, float] = IMAGENET_MEAN
    pixel_std: tuple[float, float, float] = IMAGENET_STD


@dataclass
class PretrainTrainConfig(TrainBase):
    """Schedule and machinery: fine-tuning's (``experiment.TrainBase``), with the official
    pre-training recipes' defaults, plus the following.

    Args:
        lr: peak lr (the official recipes' ``blr * batch_size / 256``, already multiplied).
        epochs: passes over the (subset of the) train split; fractions allowed.
        save_epochs: epochs after which ``checkpoint-<epoch>.pth`` is kept (MAE-epochs study);
            ``last.pth`` is always written and holds what a resume needs.
        checkpoint_every: optimizer steps between ``last.pth`` refreshes inside an epoch
            (None = only at epoch ends).
    """

    lr: float = 1.5e-4
    weight_decay: float = 0.05
    betas: tuple[float, float] = (0.9, 0.95)
    epochs: float = 1.0
    warmup_epochs: float = 0.1
    warmup_factor: float = 0.0
    batch_size: int = 64
    batch_per_device: int = 64
    log_every: int = 10
    save_epochs: tuple[int, ...] = ()
    checkpoint_every: int | None = None


class SupervisedLabels(str, enum.Enum):
    """Label set of supervised pre-training (``methods/supervised.py`` explains the choice)."""

    FASHION10 = "fashion10"  # the 10 Fashion-MNIST classes: the detector's own classes
    COARSE4 = "coarse4"  # upper-body / lower- or full-body / footwear / bag: not the detector's


class BEiTPosition(str, enum.Enum):
    """Position information of BEiT pre-training (Table 4's "BEiT pre-trained with abs")."""

    REL = "rel"  # BEiT's default: one shared relative-position bias, no absolute embeddings
    ABS = "abs"  # learned absolute embeddings instead, as MAE's ViT (no relative bias)
    BOTH = "both"  # learned absolute embeddings and the shared relative bias


@dataclass
class SupervisedConfig:
    """DeiT's recipe, scaled down: label smoothing, RandAugment-lite, mixup/cutmix.

    Args:
        crop_scale: random-resized-crop area range.
        rand_augment_ops, rand_augment_magnitude: RandAugment's N and M (M out of 10); 0 ops
            disables it.
        mixup_alpha, cutmix_alpha: Beta parameters; 0 disables each (when both are on, each
            batch uses one of them with equal chance, as DeiT does).
        labels: the pre-training label set; ``num_classes`` must be its size (10 or 4).
    """

    num_classes: int = 10
    labels: SupervisedLabels = SupervisedLabels.FASHION10
    label_smoothing: float = 0.1
    crop_scale: tuple[float, float] = (0.35, 1.0)
    rand_augment_ops: int = 2
    rand_augment_magnitude: float = 9.0
    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0


@dataclass
class MoCoV3Config:
    """MoCo v3: projector (3-layer MLP with BN) on the base encoder's class token, 2-layer
    predictor, momentum encoder, symmetric InfoNCE.

    Args:
        dim, mlp_dim: output and hidden width of projector and predictor (officially 256, 4096).
        temperature: InfoNCE temperature (0.2 for ViT).
        momentum: starting EMA momentum; it rises to 1 on a half-cosine over the schedule.
        stop_grad_patch_embed: freeze the random patch projection (MoCo v3's stability trick).
        crop_scale: random-resized-crop area range of both views.
        blur_prob, solarize_prob: per-view probabilities (the official views are asymmetric).
        blur_sigma: Gaussian blur sigma range in output pixels.
        jitter_prob, brightness, contrast: brightness/contrast jitter strength and probability.
    """

    dim: int = 128
    mlp_dim: int = 1024
    temperature: float = 0.2
    momentum: float = 0.99
    stop_grad_patch_embed: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)
    blur_prob: tuple[float, float] = (1.0, 0.1)
    solarize_prob: tuple[float, float] = (0.0, 0.2)
    blur_sigma: tuple[float, float] = (0.1, 1.0)
    jitter_prob: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4


@dataclass
class TokenizerConfig:
    """BEiT's visual tokenizer, trained here: a small discrete VAE (Gumbel-softmax relaxation,
    as DALL-E's, which BEiT uses) mapping each patch-sized cell to one of ``vocab_size`` codes.

    Args:
        vocab_size: number of visual tokens (DALL-E: 8192).
        hidden: channel width of the conv encoder/decoder.
        steps, batch_size, lr: its own training (AdamW, cosine) before BEiT pre-training.
        tau_start, tau_end: Gumbel-softmax temperature, annealed exponentially over the steps.
        kl_weight: weight of KL(q || uniform prior), which spreads use over the codebook.
        path: load a trained tokenizer from here instead of training one.
    """

    vocab_size: int = 512
    hidden: int = 64
    steps: int = 600
    batch_size: int = 64
    lr: float = 1e-3
    tau_start: float = 1.0
    tau_end: float = 0.0625
    kl_weight: float = 0.01
    path: str | None = None


@dataclass
class BEiTConfig:
    """BEiT: blockwise masking, predict the masked patches' visual tokens.

    Args:
        mask_ratio: target fraction of masked patches (BEiT: 75 of 196, about 40%).
        min_block_patches: smallest masked block (BEiT: 16 of 196; scaled to small grids).
        layer_scale_init: ``gamma_1/gamma_2`` initial value (0.1 for ViT-B pre-training).
        crop_scale: random-resized-crop area range.
        brightness, contrast: BEiT's colour jitter (0.4 each; saturation and hue do nothing to
            grey images), on the view both the ViT and the tokenizer see.
        position: relative bias (BEiT's), absolute embeddings, or both.
    """

    mask_ratio: float = 0.4
    min_block_patches: int = 4
    layer_scale_init: float = 0.1
    crop_scale: tuple[float, float] = (0.2, 1.0)
    brightness: float = 0.4
    contrast: float = 0.4
    position: BEiTPosition = BEiTPosition.REL
    tokenizer: TokenizerConfig = field(default_factory=TokenizerConfig)


@dataclass
class MAEConfig:
    """MAE: random 75% masking, lightweight decoder, per-patch normalised pixel target.

    Args:
        decoder_embed_dim, decoder_depth, decoder_num_heads: the decoder (ViT-B's is 512, 8, 16).
        norm_pix_loss: normalise each target patch by its own mean and std.
    """

    mask_ratio: float = 0.75
    decoder_embed_dim: int = 128
    decoder_depth: int = 2
    decoder_num_heads: int = 4
    norm_pix_loss: bool = True
    crop_scale: tuple[float, float] = (0.2, 1.0)


@dataclass
class PretrainEvalConfig:
    """Frozen-feature evaluation after training (and of a random-init encoder for reference).

    Args:
        bank_images: train-split images forming the k-NN bank / linear-probe train set.
        test_images: test-split images classified (first N).
        knn_k, knn_temperature: weighted k-NN voting (cosine similarity, exp(sim / T) weights).
        probe_epochs, probe_lr: linear probe on standardised frozen features (AdamW, cosine).
        batch_size: images per feature-extraction forward.
    """

    bank_images: int = 5000
    test_images: int = 2000
    knn_k: int = 20
    knn_temperature: float = 0.07
    probe_epochs: int = 30
    probe_lr: float = 1e-2
    batch_size: int = 250


@dataclass
class PretrainConfig:
    method: Method = Method.MAE
    encoder: EncoderConfig = field(default_factory=EncoderConfig)
    data: PretrainDataConfig = field(default_factory=PretrainDataConfig)
    train: PretrainTrainConfig = field(default_factory=PretrainTrainConfig)
    eval: PretrainEvalConfig = field(default_factory=PretrainEvalConfig)
    supervised: SupervisedConfig = field(default_factory=SupervisedConfig)
    mocov3: MoCoV3Config = field(default_factory=MoCoV3Config)
    beit: BEiTConfig = field(default_factory=BEiTConfig)
    mae: MAEConfig = field(default_factory=MAEConfig)


def _check_sections(data: dict[str, Any], where: str) -> None:
    method = data.get("method")
    others = [m.value for m in Method if m.value != method and m.value in data]
    if others:
        raise ConfigError(f"{where}: section(s) {others} belong to another method than "
                          f"method={method!r}; remove them")


def load_pretrain_config(source: str | Path | dict[str, Any], overrides: list[str] = ()
                         ) -> PretrainConfig:
    """Load a pre-training config from a YAML file (following ``base:`` links) or dict, then
    ``a.b=value`` overrides.

    Raises:
        ConfigError: unknown keys, wrong types, a recipe section of another method, or
            inconsistent values.
    """
    data = load_params(source, PretrainConfig, overrides)
    where = "params dict" if isinstance(source, dict) else f"{source} (merged with its bases)"
    if overrides:
        where += " + --set overrides"
    _check_sections(data, where)
    cfg: PretrainConfig = from_dict(PretrainConfig, data, where=where)
    validate_pretrain_config(cfg)
    return cfg


def validate_pretrain_config(cfg: PretrainConfig) -> None:
    t = cfg.train
    validate_train_base(t)
    if t.epochs <= 0:
        raise ConfigError("train.epochs must be positive")
    if not 0 <= t.warmup_epochs < t.epochs:
        raise ConfigError(f"train.warmup_epochs={t.warmup_epochs} would fill the whole "
                          f"{t.epochs}-epoch schedule; set it below train.epochs")
    bad = [e for e in t.save_epochs if not 0 < e <= t.epochs]
    if bad:
        raise ConfigError(f"train.save_epochs {bad} lie outside (0, epochs={t.epochs}]")
    vit = cfg.encoder.vit()
    if vit.pretrain_img_size % vit.patch_size:
        raise ConfigError("encoder: img_size must be a multiple of patch_size")
    if vit.embed_dim % 4 or vit.embed_dim % vit.num_heads:
        raise ConfigError("encoder: embed_dim must be divisible by 4 (2-D sin-cos) and num_heads")
    if not 0.0 < cfg.mae.mask_ratio < 1.0 or not 0.0 < cfg.beit.mask_ratio < 1.0:
        raise ConfigError("mask_ratio must lie in (0, 1)")
