"""The pre-training ViT: a class-token ViT whose parameter names are the official ones.

Its ``state_dict()`` keys are timm's (``cls_token``, ``pos_embed``, ``patch_embed.proj.*``,
``blocks.i.{norm1,attn.qkv,attn.proj,norm2,mlp.fc1,mlp.fc2}.*``, ``norm.*``, ``head.*``), with
BEiT's variations when asked for (``attn.q_bias/v_bias``, ``gamma_1/gamma_2``,
``rel_pos_bias.*``), so each method's checkpoint is written in its official layout without any
renaming, and the converters read it exactly as they read the official files.
"""
from __future__ import annotations

import enum

import torch
import torch.nn.functional as F
from torch import nn

from ..config import ViTConfig
from ..model.vit import Attention, DropPath, Mlp


class PosEmbedKind(str, enum.Enum):
    """Absolute position embeddings of the pre-training recipes."""

    LEARNED = "learned"  # DeiT/timm: trainable
    SINCOS_MOCOV3 = "sincos_mocov3"  # fixed; MoCo v3's channel order
    SINCOS_MAE = "sincos_mae"  # fixed; MAE's channel order
    NONE = "none"  # BEiT pre-training: relative biases only


def sincos_2d_pos_embed(embed_dim: int, grid: int, kind: PosEmbedKind, cls_token: bool = True
                        ) -> torch.Tensor:
    """Fixed 2-D sin-cos position embeddings as MAE or MoCo v3 store them.

    Token ``t = row * grid + col``. Both use frequencies ``1 / 10000 ** (i / (C/4))`` and put
    ``[sin, cos]`` of one coordinate in the first half of the channels and of the other in the
    second half; they differ in which coordinate comes first: MoCo v3 the row, MAE the column
    (``vitdet_lib.model.pos.sincos_pos_embed`` is MAE's). A converter must therefore load the
    stored tensor rather than regenerate it.

    Returns:
        [1, (1 +) grid*grid, C] float32; the class-token row (when present) is zeros.
    """
    if embed_dim % 4:
        raise ValueError("embed_dim must be divisible by 4 for 2-D sin-cos embeddings")
    if kind not in (PosEmbedKind.SINCOS_MAE, PosEmbedKind.SINCOS_MOCOV3):
        raise ValueError(f"{kind} is not a sin-cos layout")
    rows, cols = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                                torch.arange(grid, dtype=torch.float64), indexing="ij")
    quarter = embed_dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)

    def enc(coord: torch.Tensor) -> torch.Tensor:  # [grid*grid] -> [grid*grid, C/2]
        angles = coord.reshape(-1, 1) * omega[None]
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    first, second = (cols, rows) if kind == PosEmbedKind.SINCOS_MAE else (rows, cols)
    emb = torch.cat([enc(first), enc(second)], dim=1)
    if cls_token:
        emb = torch.cat([torch.zeros(1, embed_dim, dtype=emb.dtype), emb])
    return emb[None].float()


def beit_relative_position_index(grid: int) -> torch.Tensor:
    """BEiT's index into a ``[(2g-1)^2 + 3, heads]`` table for the [1+N, 1+N] token pairs.

    Patch pairs use ``(drow + g-1) * (2g-1) + (dcol + g-1)`` with ``d = query - key``, the same
    plane layout as ``model.pos.rel_pos_bias``; the three extra rows hold the class token's
    biases: class->patch (row -3), patch->class (row -2), class->class (row -1).
    """
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")
    rows, cols = rows.flatten(), cols.flatten()
    drow = rows[:, None] - rows[None, :] + grid - 1
    dcol = cols[:, None] - cols[None, :] + grid - 1
    side = 2 * grid - 1
    n = grid * grid
    index = torch.zeros(n + 1, n + 1, dtype=torch.long)
    index[1:, 1:] = drow * side + dcol
    num = side * side + 3
    index[0, :] = num - 3
    index[:, 0] = num - 2
    index[0, 0] = num - 1
    return index


class RelativePositionBias(nn.Module):
    """One relative-position bias shared by every block (BEiT pre-training's ``rel_pos_bias``)."""

    def __init__(self, grid: int, num_heads: int) -> None:
        super().__init__()
        self.relative_position_bias_table = nn.Parameter(
            torch.zeros((2 * grid - 1) ** 2 + 3, num_heads))
        self.register_buffer("relative_position_index", beit_relative_position_index(grid))

    def forward(self) -> torch.Tensor:
        """-> [heads, 1+N, 1+N]."""
        n = self.relative_position_index.shape[0]
        bias = self.relative_position_bias_table[self.relative_position_index.view(-1)]
        return bias.view(n, n, -1).permute(2, 0, 1)


class QVBiasAttention(Attention):
    """BEiT's attention: ``qkv`` without bias plus learned ``q_bias`` and ``v_bias`` (k has
    none)."""

    def __init__(self, dim: int, num_heads: int) -> None:
        super().__init__(dim, num_heads, qkv_bias=False)
        self.q_bias = nn.Parameter(torch.zeros(dim))
        self.v_bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        """x: [B, N, C]; attn_mask: broadcastable to [B, heads, N, N]."""
        bias = torch.cat([self.q_bias, torch.zeros_like(self.v_bias), self.v_bias])
        return self.proj(self.attend(F.linear(x, self.qkv.weight, bias), attn_mask))


class SeqBlock(nn.Module):
    """Pre-norm transformer block over a token sequence [B, N, C] (timm's ``Block`` names).

    Args:
        dim, num_heads, mlp_ratio: the usual.
        qv_bias: BEiT's ``q_bias/v_bias`` instead of a biased ``qkv``.
        drop_path: this block's stochastic-depth rate.
        layer_scale_init: initial ``gamma_1/gamma_2`` (BEiT); 0 = no layer scale.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qv_bias: bool = False,
                 drop_path: float = 0.0, layer_scale_init: float = 0.0) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = QVBiasAttention(dim, num_heads) if qv_bias else Attention(dim, num_heads)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale_init > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor, attn_mask: torch.Tensor | None = None) -> torch.Tensor:
        y = self.attn(self.norm1(x), attn_mask)
        x = x + self.drop_path(y if self.gamma_1 is None else self.gamma_1 * y)
        y = self.mlp(self.norm2(x))
        return x + self.drop_path(y if self.gamma_2 is None else self.gamma_2 * y)


class PretrainViT(nn.Module):
    """Class-token ViT for pre-training; methods add their heads as attributes.

    Args:
        cfg: size (patch, width, depth, heads, mlp ratio, ``pretrain_img_size``, drop path).
        pos_embed: kind of absolute position embedding (fixed ones are frozen Parameters, as
            MAE and MoCo v3 keep them, so they are part of the state dict).
        qv_bias, layer_scale_init, shared_rel_pos: BEiT's variations.

    Weights are left at PyTorch defaults; each method applies its own recipe's initialisation.
    """

    def __init__(self, cfg: ViTConfig, *, pos_embed: PosEmbedKind = PosEmbedKind.LEARNED,
                 qv_bias: bool = False, layer_scale_init: float = 0.0,
                 shared_rel_pos: bool = False) -> None:
        super().__init__()
        dim, p = cfg.embed_dim, cfg.patch_size
        self.patch_size = p
        self.grid = cfg.pretrain_img_size // p
        self.embed_dim = dim
        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, p, p)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed_kind = PosEmbedKind(pos_embed)
        if self.pos_embed_kind == PosEmbedKind.NONE:
            self.pos_embed = None
        elif self.pos_embed_kind == PosEmbedKind.LEARNED:
            self.pos_embed = nn.Parameter(torch.zeros(1, 1 + self.grid ** 2, dim))
        else:
            self.pos_embed = nn.Parameter(sincos_2d_pos_embed(dim, self.grid, self.pos_embed_kind),
                                          requires_grad=False)
        self.rel_pos_bias = (RelativePositionBias(self.grid, cfg.num_heads) if shared_rel_pos
                             else None)
        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self.blocks = nn.ModuleList(
            SeqBlock(dim, cfg.num_heads, cfg.mlp_ratio, qv_bias=qv_bias, drop_path=rates[i],
                     layer_scale_init=layer_scale_init)
            for i in range(cfg.depth))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head: nn.Module | None = None

    @property
    def num_patches(self) -> int:
        return self.grid * self.grid

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> patch embeddings [B, N, C] (row-major), without position embeddings."""
        return self.patch_embed.proj(x).flatten(2).transpose(1, 2)

    def add_pos(self, tokens: torch.Tensor) -> torch.Tensor:
        """Add the patches' absolute embeddings to [B, N, C]."""
        return tokens if self.pos_embed is None else tokens + self.pos_embed[:, 1:]

    def cls_tokens(self, batch: int) -> torch.Tensor:
        """The class token with its position embedding, [B, 1, C]."""
        cls = self.cls_token if self.pos_embed is None else self.cls_token + self.pos_embed[:, :1]
        return cls.expand(batch, -1, -1)

    def run_blocks(self, x: torch.Tensor) -> torch.Tensor:
        """[B, L, C] (class token first) -> normalised [B, L, C]."""
        bias = self.rel_pos_bias()[None] if self.rel_pos_bias is not None else None
        for blk in self.blocks:
            x = blk(x, bias)
        return self.norm(x)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """[B, 3, H, W] -> normalised tokens [B, 1+N, C], class token first."""
        tokens = self.add_pos(self.patch_tokens(x))
        return self.run_blocks(torch.cat([self.cls_tokens(x.shape[0]), tokens], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Head output on the class token, or the tokens when there is no head."""
        feats = self.forward_features(x)
        return feats if self.head is None else self.head(feats[:, 0])


def init_timm_(model: PretrainViT) -> None:
    """timm/DeiT initialisation: truncated-normal (0.02) linear weights and tokens, zero biases."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    nn.init.trunc_normal_(model.cls_token, std=0.02)
    if model.pos_embed is not None and model.pos_embed.requires_grad:
        nn.init.trunc_normal_(model.pos_embed, std=0.02)
