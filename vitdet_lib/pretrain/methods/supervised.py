"""Supervised pre-training, DeiT's recipe scaled down: classification of the class token with
label smoothing, random resized crops, flips, RandAugment and optionally mixup/cutmix.

Official layout (DeiT): ``{"model": timm ViT keys}`` with a learned ``pos_embed`` [1, 1+N, C] and
``head.weight/bias`` (here 10 or 4 classes instead of 1000).

The label confound: in the paper the supervised labels (ImageNet's 1000) are not the detection
classes (COCO's 80). Pre-training on the 10 Fashion-MNIST classes would teach the encoder exactly
the distinctions the detector is scored on, an advantage no self-supervised method gets.
``supervised.labels: coarse4`` removes most of it: four groups by where a garment is worn
(upper body: T-shirt, pullover, coat, shirt; lower or full body: trouser, dress; feet: sandal,
sneaker, ankle boot; carried: bag). The detector's hardest distinctions (shirt vs T-shirt vs
pullover vs coat, sandal vs sneaker vs boot) are then never supervised, while the labels still
carry real semantics, as ImageNet's do for COCO. A coarser label set, not a different one,
because Fashion-MNIST has no other annotation; the residual overlap (bag vs footwear) mirrors
ImageNet <-> COCO overlaps such as dog breeds vs "dog".
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ..augment import crop_flip_matrix, normalize, rand_augment, warp
from ..config import PretrainConfig, SupervisedLabels
from ..encoder import PosEmbedKind, PretrainViT, init_timm_
from .base import Batch, PretrainMethod

# Fashion-MNIST class (index) -> coarse group: 0 upper body, 1 lower or full body, 2 feet, 3 bag.
# Classes: T-shirt/top, Trouser, Pullover, Dress, Coat, Sandal, Shirt, Sneaker, Bag, Ankle boot.
COARSE4_OF_FASHION10 = (0, 1, 0, 1, 0, 2, 0, 2, 3, 2)
COARSE4_NAMES = ("upper body", "lower or full body", "feet", "bag")
LABEL_SET_SIZES = {SupervisedLabels.FASHION10: 10, SupervisedLabels.COARSE4: 4}


def pretrain_labels(labels: torch.Tensor, label_set: SupervisedLabels) -> torch.Tensor:
    """Fashion-MNIST labels int64 [B] in 0..9 -> the pre-training label set's ids [B]."""
    if SupervisedLabels(label_set) == SupervisedLabels.FASHION10:
        return labels
    return torch.tensor(COARSE4_OF_FASHION10, dtype=labels.dtype, device=labels.device)[labels]


def build_supervised_vit(cfg: PretrainConfig) -> PretrainViT:
    """The DeiT-style classifier, timm-initialised."""
    net = PretrainViT(cfg.encoder.vit(), pos_embed=PosEmbedKind.LEARNED)
    net.head = nn.Linear(net.embed_dim, cfg.supervised.num_classes)
    init_timm_(net)
    return net


def mix_batch(x: torch.Tensor, targets: torch.Tensor, mixup_alpha: float, cutmix_alpha: float
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """Mixup or cutmix (one per batch, equal chance when both are on) with the batch reversed.

    Args:
        x: [B, C, H, W]; targets: soft targets [B, K].
    Returns:
        mixed images and targets; the cutmix weight is the pasted box's true area fraction.
    """
    modes = [m for m, a in (("mixup", mixup_alpha), ("cutmix", cutmix_alpha)) if a > 0]
    if not modes:
        return x, targets
    mode = modes[int(torch.randint(len(modes), ()))]
    alpha = mixup_alpha if mode == "mixup" else cutmix_alpha
    lam = float(torch.distributions.Beta(alpha, alpha).sample())
    if mode == "mixup":
        x = lam * x + (1 - lam) * x.flip(0)
    else:
        h, w = x.shape[-2:]
        ch, cw = int(h * (1 - lam) ** 0.5), int(w * (1 - lam) ** 0.5)
        cy, cx = int(torch.randint(h, ())), int(torch.randint(w, ()))
        y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
        x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
        x = x.clone()
        x[..., y0:y1, x0:x1] = x.flip(0)[..., y0:y1, x0:x1]
        lam = 1 - (y1 - y0) * (x1 - x0) / (h * w)
    return x, lam * targets + (1 - lam) * targets.flip(0)


class Supervised(PretrainMethod):
    checkpoint_key = "model"

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        s = cfg.supervised
        size = LABEL_SET_SIZES[SupervisedLabels(s.labels)]
        if s.num_classes != size:
            raise ConfigError(f"supervised.labels={SupervisedLabels(s.labels).value} has {size} "
                              f"classes but supervised.num_classes={s.num_classes}; set "
                              f"supervised.num_classes={size}")
        self.net = build_supervised_vit(cfg)

    def make_batch(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Batch:
        s, d = self.cfg.supervised, self.cfg.data
        crop = crop_flip_matrix(len(images), s.crop_scale)
        if s.rand_augment_ops > 0:
            grey = rand_augment(images, crop, self.img_size, s.rand_augment_ops,
                                s.rand_augment_magnitude)
        else:
            grey = warp(images, crop, self.img_size)
        x = normalize(grey, d.pixel_mean, d.pixel_std)
        labels = pretrain_labels(labels, s.labels)
        k = s.num_classes
        smooth = s.label_smoothing
        targets = F.one_hot(labels, k).float() * (1 - smooth) + smooth / k
        x, targets = mix_batch(x, targets, s.mixup_alpha, s.cutmix_alpha)
        return {"images": x.to(device), "targets": targets.to(device),
                "labels": labels.to(device)}

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = net(batch["images"]).float()
        loss = torch.sum(-batch["targets"] * logits.log_softmax(dim=-1), dim=-1).mean()
        acc = (logits.argmax(dim=-1) == batch["labels"]).float().mean()
        return loss, {"train_acc": float(acc)}

    def encoder(self) -> PretrainViT:
        return self.net
