"""Supervised pre-training, DeiT's recipe scaled down: classification of the class token with
label smoothing, random resized crops, flips, RandAugment and optionally mixup/cutmix.

Official layout (DeiT): ``{"model": timm ViT keys}`` with a learned ``pos_embed`` [1, 1+N, C] and
``head.weight/bias`` (here 10 Fashion-MNIST classes instead of 1000).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..augment import crop_flip_matrix, normalize, rand_augment, warp
from ..config import PretrainConfig
from ..encoder import PosEmbedKind, PretrainViT, init_timm_
from .base import Batch, PretrainMethod


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
