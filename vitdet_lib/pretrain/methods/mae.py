"""MAE: the encoder sees a random 25% of the patches; a lightweight decoder fills in mask tokens
and regresses every hidden patch's pixels, normalised by that patch's own mean and std.

Official layout: ``{"model": {cls_token, pos_embed [1, 1+N, C] (fixed sin-cos, MAE's channel
order, zero class row), patch_embed.proj.*, blocks.*, norm.*, decoder_embed.*, mask_token
[1, 1, Cd], decoder_pos_embed [1, 1+N, Cd], decoder_blocks.*, decoder_norm.*,
decoder_pred.*}}``.
"""
from __future__ import annotations

import torch
from torch import nn

from ..augment import crop_flip_matrix, normalize, warp
from ..config import PretrainConfig
from ..encoder import PosEmbedKind, PretrainViT, SeqBlock, sincos_2d_pos_embed
from ..masking import random_masking
from .base import Batch, PretrainMethod


def patchify(images: torch.Tensor, p: int) -> torch.Tensor:
    """[B, 3, H, W] -> [B, N, p*p*3], each patch flattened as (row, col, channel) like MAE."""
    b, c, h, w = images.shape
    x = images.reshape(b, c, h // p, p, w // p, p)
    return torch.einsum("nchpwq->nhwpqc", x).reshape(b, (h // p) * (w // p), p * p * c)


def unpatchify(patches: torch.Tensor, p: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify` for a square grid."""
    b, n, _ = patches.shape
    g = round(n ** 0.5)
    x = patches.reshape(b, g, g, p, p, channels)
    return torch.einsum("nhwpqc->nchpwq", x).reshape(b, channels, g * p, g * p)


class MAENet(PretrainViT):
    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg.encoder.vit(), pos_embed=PosEmbedKind.SINCOS_MAE)
        m = cfg.mae
        self.mask_ratio = m.mask_ratio
        self.norm_pix_loss = m.norm_pix_loss
        dd = m.decoder_embed_dim
        self.decoder_embed = nn.Linear(self.embed_dim, dd)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dd))
        self.decoder_pos_embed = nn.Parameter(
            sincos_2d_pos_embed(dd, self.grid, PosEmbedKind.SINCOS_MAE), requires_grad=False)
        self.decoder_blocks = nn.ModuleList(
            SeqBlock(dd, m.decoder_num_heads, cfg.encoder.vit().mlp_ratio)
            for _ in range(m.decoder_depth))
        self.decoder_norm = nn.LayerNorm(dd, eps=1e-6)
        self.decoder_pred = nn.Linear(dd, self.patch_size ** 2 * 3)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE's: Xavier-uniform linears and patch projection (as a linear), N(0, 0.02) tokens."""
        for m in self.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        w = self.patch_embed.proj.weight
        nn.init.xavier_uniform_(w.view(w.shape[0], -1))
        nn.init.zeros_(self.patch_embed.proj.bias)
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)

    def forward_encoder(self, x: torch.Tensor, mask_ratio: float
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> latent [B, 1+L_keep, C], mask [B, N] (1 = hidden), ids_restore [B, N]."""
        tokens = self.add_pos(self.patch_tokens(x))
        ids_keep, mask, ids_restore = random_masking(x.shape[0], self.num_patches, mask_ratio,
                                                     x.device)
        tokens = torch.gather(tokens, 1, ids_keep[..., None].expand(-1, -1, tokens.shape[-1]))
        latent = self.run_blocks(torch.cat([self.cls_tokens(x.shape[0]), tokens], dim=1))
        return latent, mask, ids_restore

    def forward_decoder(self, latent: torch.Tensor, ids_restore: torch.Tensor) -> torch.Tensor:
        """-> predicted patches [B, N, p*p*3] in patch order."""
        x = self.decoder_embed(latent)
        b, n = ids_restore.shape
        fill = self.mask_token.to(x.dtype).expand(b, n + 1 - x.shape[1], -1)
        seq = torch.cat([x[:, 1:], fill], dim=1)  # [kept..., masked...]
        seq = torch.gather(seq, 1, ids_restore[..., None].expand(-1, -1, x.shape[-1]))
        x = torch.cat([x[:, :1], seq], dim=1) + self.decoder_pos_embed
        for blk in self.decoder_blocks:
            x = blk(x)
        return self.decoder_pred(self.decoder_norm(x))[:, 1:]

    def target(self, images: torch.Tensor) -> torch.Tensor:
        """Per-patch targets [B, N, p*p*3], normalised per patch when ``norm_pix_loss``."""
        t = patchify(images, self.patch_size)
        if self.norm_pix_loss:
            mean, var = t.mean(dim=-1, keepdim=True), t.var(dim=-1, keepdim=True)
            t = (t - mean) / (var + 1e-6) ** 0.5
        return t

    def forward(self, images: torch.Tensor, mask_ratio: float | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """-> loss (mean squared error over hidden patches), prediction [B, N, p*p*3], mask."""
        ratio = self.mask_ratio if mask_ratio is None else mask_ratio
        latent, mask, ids_restore = self.forward_encoder(images, ratio)
        pred = self.forward_decoder(latent, ids_restore)
        err = ((pred.float() - self.target(images).float()) ** 2).mean(dim=-1)  # [B, N]
        return (err * mask).sum() / mask.sum(), pred, mask


class MAE(PretrainMethod):
    checkpoint_key = "model"

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.net = MAENet(cfg)

    def make_batch(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Batch:
        m, d = self.cfg.mae, self.cfg.data
        grey = warp(images, crop_flip_matrix(len(images), m.crop_scale), self.img_size)
        return {"images": normalize(grey, d.pixel_mean, d.pixel_std).to(device)}

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        loss, _, _ = net(batch["images"])
        return loss, {}

    def encoder(self) -> PretrainViT:
        return self.net
