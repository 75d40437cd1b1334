"""BEiT: masked image modelling of discrete visual tokens.

Blockwise masking hides ~40% of the patches, whose embeddings are replaced by ``mask_token``;
the ViT (no absolute position embeddings; one relative-position bias shared by all blocks;
``q_bias/v_bias``; layer scale) predicts each hidden patch's token from a tokenizer trained
here (``tokenizer.py``) with ``lm_head``. Views: BEiT's colour jitter (brightness and contrast
here: the images are grey), flip and random resized crop, shared by the ViT and the tokenizer.

``beit.position: abs`` pre-trains with learned absolute embeddings (``pos_embed``
[1, 1+N, C], BEiT's ``use_abs_pos_emb``) instead of the relative bias, and ``both`` with both:
the paper's Table 4 row of a BEiT pre-trained with absolute embeddings. The BEiT reader in
``vitdet_lib.checkpoint`` transfers that ``pos_embed`` (``init.abs_pos_init: pretrained``).

Official layout: ``{"model": {cls_token, mask_token, patch_embed.proj.*,
rel_pos_bias.relative_position_bias_table [(2g-1)^2 + 3, heads],
rel_pos_bias.relative_position_index [1+N, 1+N], blocks.i.{norm1, attn.qkv.weight, attn.q_bias,
attn.v_bias, attn.proj, norm2, mlp.fc1, mlp.fc2, gamma_1, gamma_2}, norm.*, lm_head.*}}``.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from ...engine.distributed import barrier
from ..augment import brightness_contrast, crop_flip_matrix, normalize, warp
from ..config import BEiTPosition, PretrainConfig
from ..encoder import PosEmbedKind, PretrainViT
from ..masking import blockwise_masks
from ..tokenizer import DiscreteVAE, load_tokenizer, save_tokenizer, train_tokenizer
from .base import Batch, PretrainMethod

TOKENIZER_FILE = "tokenizer.pth"


class BEiTNet(PretrainViT):
    def __init__(self, cfg: PretrainConfig, vocab_size: int) -> None:
        position = BEiTPosition(cfg.beit.position)
        pos_embed = PosEmbedKind.NONE if position == BEiTPosition.REL else PosEmbedKind.LEARNED
        super().__init__(cfg.encoder.vit(), pos_embed=pos_embed, qv_bias=True,
                         layer_scale_init=cfg.beit.layer_scale_init,
                         shared_rel_pos=position != BEiTPosition.ABS)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, self.embed_dim))
        self.lm_head = nn.Linear(self.embed_dim, vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        """BEiT's: truncated normal (std 0.02, cut at +-std) for tokens, linears, convs and the
        LM head; each residual branch's output projection scaled by 1/sqrt(2 * layer)."""
        std = 0.02
        for m in self.modules():
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=std, a=-std, b=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for t in (self.cls_token, self.mask_token, self.pos_embed):
            if t is not None:
                nn.init.trunc_normal_(t, std=std, a=-std, b=std)
        for layer, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer))

    def forward_features(self, x: torch.Tensor, bool_masked_pos: torch.Tensor | None = None
                         ) -> torch.Tensor:
        """x [B, 3, H, W], bool_masked_pos [B, N] (True = hidden) -> tokens [B, 1+N, C]."""
        tokens = self.patch_tokens(x)
        if bool_masked_pos is not None:
            w = bool_masked_pos.unsqueeze(-1).to(tokens.dtype)
            tokens = tokens * (1 - w) + self.mask_token.to(tokens.dtype) * w
        tokens = self.add_pos(tokens)
        return self.run_blocks(torch.cat([self.cls_tokens(x.shape[0]), tokens], dim=1))

    def forward(self, x: torch.Tensor, bool_masked_pos: torch.Tensor) -> torch.Tensor:
        """-> token logits of the hidden patches [M, vocab] (M = hidden patches in the batch)."""
        feats = self.forward_features(x, bool_masked_pos)[:, 1:]
        return self.lm_head(feats[bool_masked_pos])


class BEiT(PretrainMethod):
    checkpoint_key = "model"

    def __init__(self, cfg: PretrainConfig) -> None:
        super().__init__(cfg)
        self.net = BEiTNet(cfg, cfg.beit.tokenizer.vocab_size)
        self.tokenizer: DiscreteVAE | None = None
        self.tokenizer_stats: dict[str, Any] = {}

    def prepare(self, images: torch.Tensor, output_dir: str | None, log: Any) -> None:
        """Load the tokenizer (``beit.tokenizer.path``, or ``tokenizer.pth`` left in the output
        directory by an earlier attempt) or train one and save it there."""
        t = self.cfg.beit.tokenizer
        saved = Path(output_dir) / TOKENIZER_FILE if output_dir else None
        if t.path and not Path(t.path).is_file():
            raise FileNotFoundError(f"beit.tokenizer.path={t.path} does not exist")
        path = Path(t.path) if t.path else saved
        if path is None or not path.is_file():
            rank = dist.get_rank() if dist.is_initialized() else 0
            if saved is None and dist.is_initialized():
                raise ValueError("distributed BEiT needs an output directory for the tokenizer")
            if rank == 0:
                self.tokenizer, self.tokenizer_stats = train_tokenizer(
                    images, t, img_size=self.img_size, patch_size=self.vit.patch_size,
                    crop_scale=self.cfg.beit.crop_scale, seed=self.cfg.train.seed, log=log)
                if saved is not None:
                    save_tokenizer(self.tokenizer, str(saved), self.tokenizer_stats)
            barrier()  # the other ranks load what rank 0 saved
        if self.tokenizer is None:
            self.tokenizer, self.tokenizer_stats = load_tokenizer(str(path))
        if self.tokenizer.vocab_size != t.vocab_size:
            raise ValueError(f"tokenizer has {self.tokenizer.vocab_size} codes, "
                             f"beit.tokenizer.vocab_size={t.vocab_size}")
        if log is not None:
            log({"type": "tokenizer_stats", **self.tokenizer_stats})

    def make_batch(self, images: torch.Tensor, labels: torch.Tensor, device: torch.device) -> Batch:
        if self.tokenizer is None:
            raise RuntimeError("BEiT.prepare() must load or train the tokenizer first")
        b, d = self.cfg.beit, self.cfg.data
        grey = warp(images, crop_flip_matrix(len(images), b.crop_scale), self.img_size)
        grey = brightness_contrast(grey, b.brightness, b.contrast)
        ids = self.tokenizer.tokenize(grey)  # the same view the ViT sees
        mask = blockwise_masks(len(images), self.net.grid, b.mask_ratio, b.min_block_patches)
        return {"images": normalize(grey, d.pixel_mean, d.pixel_std).to(device),
                "mask": mask.to(device), "token_ids": ids.to(device)}

    def loss(self, net: nn.Module, batch: Batch) -> tuple[torch.Tensor, dict[str, float]]:
        logits = net(batch["images"], batch["mask"]).float()
        labels = batch["token_ids"][batch["mask"]]
        loss = F.cross_entropy(logits, labels)
        acc = (logits.argmax(dim=-1) == labels).float().mean()
        return loss, {"mim_acc": float(acc), "mask_frac": float(batch["mask"].float().mean())}

    def encoder(self) -> PretrainViT:
        return self.net
