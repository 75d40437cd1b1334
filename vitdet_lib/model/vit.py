"""A plain ViT whose detection-time behaviour (attention layout, windows, position
information) is configured, not forked. Parameter names follow timm/MAE (``patch_embed.proj``,
``blocks.N.attn.qkv``...) so official checkpoints map onto them with few renames.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from ..config import AttentionLayout, RelPos, ViTConfig
from .attention import biased_attention
from .pos import GridBias, rel_pos_bias, resize_abs_pos

# Largest dense global bias CPU inference builds and caches (ViT-B at 1024: 805 MB); beyond it
# (e.g. ViT-L at 1536: 5.4 GB) inference also uses the factored bias, ~25 % slower attention.
DENSE_BIAS_MAX_BYTES = 1 << 30


def _window_regions(h: int, w: int, window_size: int):
    """Blocks of a grid that map onto whole-window views: (rows, cols, window-index slices and
    sizes) for the full windows and the partial last window row/column."""
    r = window_size
    fh, fw = h // r, w // r
    rows = [(0, fh, r)] if fh else []
    rows += [(fh, fh + 1, h - fh * r)] if h % r else []
    cols = [(0, fw, r)] if fw else []
    cols += [(fw, fw + 1, w - fw * r)] if w % r else []
    for i0, i1, nr in rows:
        for j0, j1, nc in cols:
            yield (slice(i0 * r, i0 * r + (i1 - i0) * nr), slice(j0 * r, j0 * r + (j1 - j0) * nc),
                   (slice(i0, i1), slice(None, nr), slice(j0, j1), slice(None, nc)),
                   (i1 - i0, nr, j1 - j0, nc))


def window_partition(x: torch.Tensor, window_size: int) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping windows, zero-padding it to whole windows.

    Args:
        x: [B, H, W, C].
    Returns:
        windows [B * num_windows, window_size * window_size, C] and the padded size (Hp, Wp).

    One copy: the tokens go straight into window order and only the padding is zeroed (padding
    first and partitioning after writes the padded grid twice).
    """
    b, h, w, c = x.shape
    r = window_size
    hp, wp = h + (-h) % r, w + (-w) % r
    if (hp, wp) == (h, w):
        windows = x.view(b, h // r, r, w // r, r, c).transpose(2, 3).reshape(-1, r * r, c)
        return windows, (hp, wp)
    win = x.new_empty(b, hp // r, wp // r, r, r, c)
    grid = win.permute(0, 1, 3, 2, 4, 5)  # [B, Hp/r, r, Wp/r, r, C]: padded-grid indexing
    for rows, cols, (wi, ri, wj, rj), shape in _window_regions(h, w, r):
        grid[:, wi, ri, wj, rj].copy_(x[:, rows, cols].reshape(b, *shape, c))
    if h != hp:
        grid[:, -1, h % r:].zero_()
    if w != wp:
        grid[:, :, :, -1, w % r:].zero_()
    return win.view(-1, r * r, c), (hp, wp)


def window_unpartition(windows: torch.Tensor, window_size: int, padded_hw: tuple[int, int],
                       hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition`: [B * num_windows, r*r, C] -> [B, H, W, C]
    (contiguous, the padding dropped in the same single copy)."""
    hp, wp = padded_hw
    h, w = hw
    r = window_size
    c = windows.shape[-1]
    grid = windows.view(-1, hp // r, wp // r, r, r, c).transpose(2, 3)  # [B, Hp/r, r, Wp/r, r, C]
    if (hp, wp) == (h, w):
        return grid.reshape(-1, hp, wp, c)
    b = grid.shape[0]
    out = windows.new_empty(b, h, w, c)
    for rows, cols, (wi, ri, wj, rj), shape in _window_regions(h, w, r):
        block = grid[:, wi, ri, wj, rj].reshape(b, shape[0] * shape[1], shape[2] * shape[3], c)
        out[:, rows, cols].copy_(block)
    return out


def window_padding_mask(hw: tuple[int, int], window_size: int,
                        device: torch.device) -> torch.Tensor | None:
    """Additive key mask [num_windows, 1, 1, r*r]: -inf on padding tokens, None without padding.

    Masking the padded keys makes real tokens' outputs independent of the padding (detectron2's
    ViT lets padded zeros take part in attention).
    """
    h, w = hw
    if h % window_size == 0 and w % window_size == 0:
        return None
    valid = torch.zeros(1, h, w, 1, device=device)
    valid = F.pad(valid, (0, 0, 0, (-w) % window_size, 0, (-h) % window_size), value=1.0)
    padded, _ = window_partition(valid, window_size)  # [num_windows, r*r, 1]
    mask = padded[..., 0].masked_fill(padded[..., 0] > 0, float("-inf"))
    return mask[:, None, None, :]


class DropPath(nn.Module):
    """Stochastic depth: drop the residual branch per sample with probability ``p``."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.p == 0.0 or not self.training:
            return x
        keep = 1.0 - self.p
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Attention(nn.Module):
    """Multi-head self-attention through a fused kernel (:func:`biased_attention`); the
    relative-position bias (and padding mask) arrives pre-built as ``attn_mask``."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True) -> None:
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor,
                attn_mask: torch.Tensor | GridBias | None = None) -> torch.Tensor:
        """x: [B, N, C]; attn_mask: broadcastable to [B, heads, N, N]."""
        return self.proj(self.attend(self.qkv(x), attn_mask))

    def attend(self, qkv: torch.Tensor,
               attn_mask: torch.Tensor | GridBias | None = None) -> torch.Tensor:
        """The attention proper, before the output projection: qkv [B, N, 3C] -> [B, N, C]."""
        b, n, c3 = qkv.shape
        c = c3 // 3
        qkv = qkv.view(b, n, 3, self.num_heads, c // self.num_heads).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # [B, heads, N, head_dim]
        x = biased_attention(q, k, v, attn_mask)
        return x.transpose(1, 2).reshape(b, n, c)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Block(nn.Module):
    """Pre-norm transformer block over a token grid, windowed (``window_size > 0``) or global.

    Args:
        dim, num_heads, mlp_ratio, qkv_bias: the usual.
        drop_path: this block's stochastic-depth rate.
        layer_scale_init: initial layer-scale value (``gamma_1``/``gamma_2``, BEiT); 0 = none.
        window_size: attention window side in tokens; 0 = global attention.
    """

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, layer_scale_init: float = 0.0,
                 window_size: int = 0) -> None:
        super().__init__()
        self.window_size = window_size
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        if layer_scale_init > 0:
            self.gamma_1 = nn.Parameter(torch.full((dim,), layer_scale_init))
            self.gamma_2 = nn.Parameter(torch.full((dim,), layer_scale_init))
        else:
            self.gamma_1 = self.gamma_2 = None

    def forward(self, x: torch.Tensor,
                attn_mask: torch.Tensor | GridBias | None = None) -> torch.Tensor:
        """x: [B, H, W, C]; attn_mask: [B*num_windows or 1, heads, N, N] for this block's kind."""
        b, h, w, c = x.shape
        y = self.norm1(x)
        if self.window_size:
            # qkv and proj are per-token: run them on the H x W grid, not on the padded windows
            # (padding to whole windows adds ~20% tokens at 1024/16 with r=14); the zero-padded
            # keys are masked, the padded queries dropped
            qkv, padded_hw = window_partition(self.attn.qkv(y), self.window_size)
            y = self.attn.attend(qkv, attn_mask)
            y = self.attn.proj(window_unpartition(y, self.window_size, padded_hw, (h, w)))
        else:
            y = self.attn(y.reshape(b, h * w, c), attn_mask).view(b, h, w, c)
        if self.gamma_1 is not None:
            y = self.gamma_1 * y
        x = x + self.drop_path(y)
        y = self.mlp(self.norm2(x))
        if self.gamma_2 is not None:
            y = self.gamma_2 * y
        return x + self.drop_path(y)


class ViT(nn.Module):
    """Plain ViT backbone for detection: no class token, no final norm; returns the token grids
    at ``out_indexes`` as [B, C, H/p, W/p] maps.

    Args:
        cfg: the ViT configuration (size, attention layout, position information...).
        img_size: detection input side; sets the stored absolute-embedding grid and the global
            relative-position table. Other sizes still run (embeddings/tables are resized).
        out_indexes: blocks whose outputs are returned (default: the last block of each quarter).
    """

    def __init__(self, cfg: ViTConfig, img_size: int = 1024,
                 out_indexes: tuple[int, ...] | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.patch_size = cfg.patch_size
        self.out_indexes = tuple(out_indexes if out_indexes is not None
                                 else cfg.quarter_end_indexes)
        grid = img_size // cfg.patch_size
        dim, heads = cfg.embed_dim, cfg.num_heads
        self.window_size = cfg.effective_window_size
        global_idx = set(cfg.global_block_indexes)
        self.checkpoint_blocks = cfg.attention == AttentionLayout.GLOBAL_CHECKPOINT

        self.patch_embed = nn.Module()
        self.patch_embed.proj = nn.Conv2d(3, dim, cfg.patch_size, cfg.patch_size)
        self.pos_embed = nn.Parameter(torch.zeros(1, grid, grid, dim)) if cfg.use_abs_pos else None

        # one relative-position table per attention kind, shared by every block of that kind
        self.rel_pos_window_table = self.rel_pos_global_table = None
        if cfg.rel_pos == RelPos.SHARED:
            if len(global_idx) < cfg.depth:
                self.rel_pos_window_table = nn.Parameter(
                    torch.zeros((2 * self.window_size - 1) ** 2, heads))
            if global_idx:
                self.rel_pos_global_table = nn.Parameter(torch.zeros((2 * grid - 1) ** 2, heads))

        rates = torch.linspace(0, cfg.drop_path_rate, cfg.depth).tolist()
        self._mask_cache: tuple | None = None  # (key, masks) for inference; see attention_masks
        self.blocks = nn.ModuleList(
            Block(dim, heads, cfg.mlp_ratio, cfg.qkv_bias, drop_path=rates[i],
                  layer_scale_init=cfg.layer_scale_init,
                  window_size=0 if i in global_idx else self.window_size)
            for i in range(cfg.depth)
        )
        self.init_weights()

    @property
    def embed_dim(self) -> int:
        return self.cfg.embed_dim

    def init_weights(self) -> None:
        """Random initialisation as BEiT does it (the paper's "random" init): truncated normal
        (std 0.02) weights, zero biases, and each residual branch's output projection scaled by
        1/sqrt(2 * layer). Relative-position tables start at zero."""
        def _init(m: nn.Module) -> None:
            if isinstance(m, (nn.Linear, nn.Conv2d)):
                nn.init.trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

        self.apply(_init)
        if self.pos_embed is not None:
            nn.init.trunc_normal_(self.pos_embed, std=0.02)
        for layer, blk in enumerate(self.blocks, start=1):
            blk.attn.proj.weight.data.div_(math.sqrt(2.0 * layer))
            blk.mlp.fc2.weight.data.div_(math.sqrt(2.0 * layer))

    def set_drop_path_rate(self, rate: float) -> None:
        """Re-spread stochastic depth linearly from 0 to ``rate`` (a fine-tuning
        hyper-parameter)."""
        for blk, p in zip(self.blocks, torch.linspace(0, rate, len(self.blocks)).tolist()):
            blk.drop_path.p = p

    def clear_mask_cache(self) -> None:
        """Forget the masks cached for inference, so the next forward builds (and, when measured,
        counts) them again."""
        self._mask_cache = None

    def attention_masks(self, hw: tuple[int, int], batch: int, device: torch.device
                        ) -> tuple[torch.Tensor | None, torch.Tensor | GridBias | None]:
        """Build, once per forward, the masks shared by all windowed and all global blocks.

        Returns:
            window mask [B*num_windows or 1, heads, r*r, r*r] (bias + padding) or None;
            global bias or None: dense [1, heads, H*W, H*W] on GPUs (SDPA) and for CPU inference
            (built once, cached, read by the fused kernel: fastest); factored
            (:class:`GridBias`, [heads, 2H-1, W, W]) for CPU training, where the attention builds it
            chunk by chunk and neither the dense bias nor its gradient exists (-2.2 GB for
            ViT-B at 1024), and for CPU inference when the dense bias would exceed
            ``DENSE_BIAS_MAX_BYTES``.
        """
        key = self._mask_cache_key(hw, batch, device)
        if key is not None and self._mask_cache is not None and self._mask_cache[0] == key:
            return self._mask_cache[1]
        window_mask = global_mask = None
        r = self.window_size
        if any(blk.window_size for blk in self.blocks):
            pad = window_padding_mask(hw, r, device)  # [num_windows, 1, 1, r*r]
            if self.rel_pos_window_table is not None:
                window_mask = rel_pos_bias(self.rel_pos_window_table, (r, r))[None]
            if pad is not None:
                window_mask = pad if window_mask is None else window_mask + pad
                if window_mask.shape[0] == 1:  # one window per image
                    window_mask = window_mask.expand(batch, *window_mask.shape[1:])
                else:  # windows are batch-major: [B * num_windows, ...]
                    window_mask = window_mask.repeat(batch, 1, 1, 1)
        if self.rel_pos_global_table is not None:
            global_mask = GridBias.from_table(self.rel_pos_global_table, hw)
            n = hw[0] * hw[1]
            dense_bytes = global_mask.heads * n * n * global_mask.rows.element_size()
            if device.type != "cpu" or (key is not None and dense_bytes <= DENSE_BIAS_MAX_BYTES):
                global_mask = global_mask.dense()
        if torch.is_autocast_enabled(device.type):  # cast once here, not in every block
            dtype = torch.get_autocast_dtype(device.type)
            if window_mask is not None:
                window_mask = window_mask.to(dtype)
            if isinstance(global_mask, torch.Tensor):
                global_mask = global_mask.to(dtype)
        if key is not None:
            self._mask_cache = (key, (window_mask, global_mask))
        return window_mask, global_mask

    def _mask_cache_key(self, hw: tuple[int, int], batch: int,
                        device: torch.device) -> tuple | None:
        """Identity of the masks when they can be reused across forwards, else None.

        Without autograd the masks depend only on the grid, the batch and the tables' contents,
        so inference reuses them (the dense global bias used on GPUs is 805 MB at 1024 for ViT-B
        in fp32). Training rebuilds them every forward:
        the tables change at every step and their gradients flow through the masks.
        """
        tables = [t for t in (self.rel_pos_window_table, self.rel_pos_global_table)
                  if t is not None]
        if torch.is_grad_enabled() and any(t.requires_grad for t in tables):
            self._mask_cache = None  # do not keep a stale bias alive during training
            return None
        amp = (torch.get_autocast_dtype(device.type) if torch.is_autocast_enabled(device.type)
               else None)
        versions = tuple((t.data_ptr(), t._version, t.dtype) for t in tables)
        return (hw, batch, str(device), amp) + versions

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """x: [B, 3, H, W] (padded to a multiple of the patch size if needed) ->
        list of [B, C, H/p, W/p], one per ``out_indexes``."""
        p = self.patch_size
        if x.shape[-2] % p or x.shape[-1] % p:
            x = F.pad(x, (0, (-x.shape[-1]) % p, 0, (-x.shape[-2]) % p))
        x = self.patch_embed.proj(x).permute(0, 2, 3, 1)  # [B, H, W, C]
        hw = (x.shape[1], x.shape[2])
        if self.pos_embed is not None:
            x = x + resize_abs_pos(self.pos_embed, hw)
        window_mask, global_mask = self.attention_masks(hw, x.shape[0], x.device)

        outs = []
        for i, blk in enumerate(self.blocks):
            mask = window_mask if blk.window_size else global_mask
            if self.checkpoint_blocks and self.training and torch.is_grad_enabled():
                x = torch.utils.checkpoint.checkpoint(blk, x, mask, use_reentrant=False)
            else:
                x = blk(x, mask)
            if i in self.out_indexes:
                outs.append(x.permute(0, 3, 1, 2))
        return outs
