"""MoCo v3 for ViT: two augmented views, a base encoder with a projection MLP and a predictor,
a momentum encoder (EMA of the base, momentum rising to 1 on a half cosine) and the symmetric
InfoNCE loss ``ctr(q1, k2) + ctr(q2, k1)`` scaled by ``2 T``, as in the official code.

Official layout: ``{"state_dict": {"module.base_encoder.*", "module.momentum_encoder.*",
"module.predictor.*"}}`` (saved from a DDP wrapper), where the encoders are timm ViTs with the
fixed sin-cos ``pos_embed`` in MoCo v3's channel order (zero class-token row) and ``head`` is
the projection MLP ``Linear-BN-ReLU-Linear-BN-ReLU-Linear-BN(affine=False)`` (``head.0`` ...
``head.7``); the predictor is ``Linear-BN-ReLU-Linear`` (``predictor.0`` .. ``predictor.3``).
"""
from __future__ import annotations

import copy
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...config import ConfigError
from ..augment import (
    brightness_contrast,
    crop_flip_matrix,
    gaussian_blur,
    normalize,
    solarize,
    warp,
)
from ..config import PretrainConfig
from ..encoder import PosEmbedKind, PretrainViT
from .base import Batch, PretrainMethod


def build_mlp(num_layers: int, in_dim: int, hidden_dim: int, out_dim: int, last_bn: bool = True
              ) -> nn.Sequential:
    """MoCo v3's MLPs: bias-free Linears, BN + ReLU between them, an affine-free BN at the end
    when ``last_bn`` (so the indices, hence the state-dict keys, are the official ones)."""
    layers: list[nn.Module] = []
    for i in range(num_layers):
        d_in = in_dim if i == 0 else hidden_dim
        d_out = out_dim if i == num_layers - 1 else hidden_dim
        layers.append(nn.Linear(d_in, d_out, bias=False))
        if i < num_layers - 1:
            layers += [nn.BatchNorm1d(d_out), nn.ReLU(inplace=True)]
        elif last_bn:
            layers.append(nn.BatchNorm1d(d_out, affine=False))
    return nn.Sequential(*layers)


def init_mocov3_vit_(vit: PretrainViT, stop_grad_patch_embed: bool) -> None:
    """MoCo v3's ViT initialisation: qkv uniform as if q, k, v were separate layers, other
    linears Xavier-uniform, tiny class token, patch projection uniform (optionally frozen)."""
    for name, m in vit.named_modules():
        if isinstance(m, nn.Linear):
            if name.endswith("qkv"):
                bound = math.sqrt(6.0 / (m.weight.shape[0] // 3 + m.weight.shape[1]))
                nn.init.uniform_(m.weight, -bound, bound)
            else:
                nn.init.xavier_uniform_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.normal_(vit.cls_token, std=1e-6)
    proj = vit.patch_embed.proj
    bound = math.sqrt(6.0 / (3 * vit.patch_size ** 2 + vit.embed_dim))
    nn.init.uniform_(proj.weight, -bound, bound)
    nn.init.zeros_(proj.bias)
    if stop_grad_patch_embed:
        proj.weight.requires_grad_(False)
        proj.bias.requires_grad_(False)


def _gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate [B, D] over ranks (no gradient), rank order."""
    if not (dist.is_available() and dist.is_initialized()) or dist.get_world_size() == 1:
        return x
    out = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(out, x.contiguous())
    return torch.cat(out)


def contrastive_loss(q: torch.Tensor, k: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE of queries [B, D] against all ranks' keys; positives are the same images."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)
    k = _gather(k)
    logits = q @ k.T / temperature
    rank = dist.get_rank() if dist.is_available() and dist.is_initialized() else 0
    labels = torch.arange(q.shape[0], device=q.device) + q.shape[0] * rank
    return F.cross_entropy(logits, labels) * (2 * temperature)


class MoCoV3Net(nn.Module):
    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__()
        m = cfg.mocov3
        self.temperature = m.temperature
        base = PretrainViT(cfg.encoder.vit(), pos_embed=PosEmbedKind.SINCOS_MOCOV3)
        init_mocov3_vit_(base, m.stop_grad_patch_embed)
        base.head = build_mlp(3, base.embed_dim, m.mlp_dim, m.dim)
        self.base_encoder = base
        self.momentum_encoder = copy.deepcopy(base)
        for p in self.momentum_encoder.parameters():
            p.requires_grad_(False)
        self.predictor = build_mlp(2, m.dim, m.mlp_dim, m.dim, last_bn=False)

    def forward(self, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
        q1 = self.predictor(self.base_encoder(x1))
        q2 = self.predictor(self.base_encoder(x2))
        with torch.no_grad():
            k1 = self.momentum_encoder(x1)
            k2 = self.momentum_encoder(x2)
        t = self.temperature
        return contrastive_loss(q1, k2, t) + contrastive_loss(q2, k1, t)

    @torch.no_grad()
    def update_momentum_encoder(self, m: float) -> None:
        for pb, pm in zip(self.base_encoder.parameters(), self.momentum_encoder.parameters()):
            pm.mul_(m).add_(pb.detach(), alpha=1 - m)


def check_contrastive_batch(batch_size: int, batch_per_device: int, world_size: int) -> None:
    """Refuse gradient accumulation: one forward pass over all processes must hold the whole
    ``batch_size`` (the negatives of each query and the BatchNorm batch).

    Raises:
        ConfigError: naming the keys and the ways out.
    """
    per_pass = batch_per_device * world_size
    if per_pass < batch_size:
        raise ConfigError(
            f"mocov3: train.batch_per_device={batch_per_device} x {world_size} process(es) = "
            f"{per_pass} images per contrastive loss, fewer than train.batch_size={batch_size}: "
            f"gradient accumulation would shrink MoCo v3's negatives and BatchNorm batches to "
            f"{per_pass}. Set train.batch_per_device={batch_size // world_size} (memory "
            f"permitting), run {-(-batch_size // batch_per_device)} processes (torchrun; keys are "
            f"all_gathered), or lower train.batch_size to {per_pass}.")


class MoCoV3(PretrainMethod):
    checkpoint_key = "state_dict"
    checkpoint_prefix = "module."

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.net = MoCoV3Net(cfg)

    def _view(self, images: torch.Tensor, view: int) -> torch.Tensor:
        m, d = self.cfg.mocov3, self.cfg.data
        x = warp(images, crop_flip_matrix(len(images), m.crop_scale), self.img_size)
        x = brightness_contrast(x, m.brightness, m.contrast, m.jitter_prob)
        x = gaussian_blur(x, m.blur_sigma, m.blur_prob[view])
        x = solarize(x, m.solarize_prob[view])
        return normalize(x, d.pixel_mean, d.pixel_std)

    def make_batch(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Batch:
        # checked here, on the micro-batch training actually feeds, since the process count is
        # only known at run time (a checkpoint's config is also loaded by 1-process evaluation)
        world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
        check_contrastive_batch(self.cfg.train.batch_size, len(images), world)
        return {"x1": self._view(images, 0).to(device), "x2": self._view(images, 1).to(device)}

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        return net(batch["x1"], batch["x2"]), {}

    def momentum_at(self, progress: float) -> float:
        """MoCo v3's schedule: ``1 - (1 - m0) * (1 + cos(pi * progress)) / 2``."""
        return 1 - 0.5 * (1 + math.cos(math.pi * progress)) * (1 - self.cfg.mocov3.momentum)

    def on_step_end(self, progress: float) -> None:
        # the official loop updates at the start of the next step, with that step's momentum
        self.net.update_momentum_encoder(self.momentum_at(progress))

    def encoder(self) -> PretrainViT:
        return self.net.base_encoder
