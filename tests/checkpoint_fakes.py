"""Synthetic checkpoints with the key names and shapes of the official ViT files.

Defaults are ViT-B/16 at 224 (14x14 grid): MAE ``mae_pretrain_vit_base.pth`` (optionally with the
decoder of the visualisation checkpoint), MoCo v3 ``vit-b-300ep.pth.tar``, DeiT-B
``deit_base_patch16_224`` (optionally the distilled one), BEiT-B/16 pre-trained with the shared
relative-position table (optionally the per-block tables). Kept weights are random (so a
misplaced tensor shows); weights the loader must drop are zeros (cheap), and MoCo v3's momentum
encoder aliases the base encoder's tensors to save memory.
"""
from __future__ import annotations

import functools
import itertools

import torch

VIT_B = {"dim": 768, "depth": 12, "heads": 12, "patch": 16, "grid": 14}
_BLOCK_SHAPES = {  # suffix -> shape as a function of (dim, hidden)
    "norm1.weight": lambda d, h: (d,), "norm1.bias": lambda d, h: (d,),
    "attn.qkv.weight": lambda d, h: (3 * d, d), "attn.qkv.bias": lambda d, h: (3 * d,),
    "attn.proj.weight": lambda d, h: (d, d), "attn.proj.bias": lambda d, h: (d,),
    "norm2.weight": lambda d, h: (d,), "norm2.bias": lambda d, h: (d,),
    "mlp.fc1.weight": lambda d, h: (h, d), "mlp.fc1.bias": lambda d, h: (h,),
    "mlp.fc2.weight": lambda d, h: (d, h), "mlp.fc2.bias": lambda d, h: (d,),
}


@functools.lru_cache(maxsize=4)
def encoder(dim: int = 768, depth: int = 12, patch: int = 16, qkv_bias: bool = True,
            seed: int = 0) -> dict[str, torch.Tensor]:
    """Patch embedding + blocks in timm names, random values (cached: do not modify)."""
    g = torch.Generator().manual_seed(seed)
    out = {"patch_embed.proj.weight": torch.randn(dim, 3, patch, patch, generator=g),
           "patch_embed.proj.bias": torch.randn(dim, generator=g)}
    for i in range(depth):
        for suffix, shape in _BLOCK_SHAPES.items():
            if suffix == "attn.qkv.bias" and not qkv_bias:
                continue
            out[f"blocks.{i}.{suffix}"] = torch.randn(shape(dim, 4 * dim), generator=g)
    return out


def mae_sincos(dim: int, grid: int) -> torch.Tensor:
    """MAE's stored layout (util/pos_embed.py): [grid*grid, C] with channels
    [sin(col w), cos(col w), sin(row w), cos(row w)]: the column coordinate comes first."""
    return _sincos(dim, grid, first_is_row=False)


def mocov3_sincos(dim: int, grid: int) -> torch.Tensor:
    """MoCo v3's stored layout (vits.py): its meshgrid puts the row coordinate first,
    [sin(row w), cos(row w), sin(col w), cos(col w)]."""
    return _sincos(dim, grid, first_is_row=True)


def _sincos(dim: int, grid: int, first_is_row: bool) -> torch.Tensor:
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, dtype=torch.float64) / (dim // 4))
    token = torch.arange(grid * grid)
    row, col = (token // grid).double(), (token % grid).double()  # row-major tokens

    def enc(v: torch.Tensor) -> torch.Tensor:
        a = v[:, None] * omega[None]
        return torch.cat([a.sin(), a.cos()], dim=1)

    first, second = (row, col) if first_is_row else (col, row)
    return torch.cat([enc(first), enc(second)], dim=1).float()


def _with_cls(pos: torch.Tensor, prefix: int = 1) -> torch.Tensor:
    """[N, C] -> [1, prefix + N, C] with zero class slot(s), as MAE / MoCo v3 store it."""
    return torch.cat([torch.zeros(prefix, pos.shape[1]), pos])[None]


def _norm(prefix: str, dim: int) -> dict[str, torch.Tensor]:
    return {f"{prefix}.weight": torch.ones(dim), f"{prefix}.bias": torch.zeros(dim)}


def mae(dim: int = 768, depth: int = 12, patch: int = 16, grid: int = 14, decoder: bool = False,
        **_: int) -> dict:
    """``{"model": ...}`` of an MAE pre-trained encoder (+ the decoder if asked)."""
    sd = dict(encoder(dim, depth, patch))
    sd.update(cls_token=torch.zeros(1, 1, dim), pos_embed=_with_cls(mae_sincos(dim, grid)),
              **_norm("norm", dim))
    if decoder:  # mae_visualize_*: 512-wide, 8 blocks
        d = 512
        sd.update({"mask_token": torch.zeros(1, 1, d), "decoder_embed.weight": torch.zeros(d, dim),
                   "decoder_embed.bias": torch.zeros(d),
                   "decoder_pos_embed": torch.zeros(1, 1 + grid * grid, d),
                   "decoder_pred.weight": torch.zeros(patch * patch * 3, d),
                   "decoder_pred.bias": torch.zeros(patch * patch * 3), **_norm("decoder_norm", d)})
        for i in range(8):
            sd.update({f"decoder_blocks.{i}.{s}": torch.zeros(shape(d, 4 * d))
                       for s, shape in _BLOCK_SHAPES.items()})
    return {"model": sd}


def deit(dim: int = 768, depth: int = 12, patch: int = 16, grid: int = 14, distilled: bool = False,
         **_: int) -> dict:
    """``{"model": ...}`` of a DeiT supervised classifier (learned pos_embed, 1000 classes)."""
    g = torch.Generator().manual_seed(1)
    prefix = 2 if distilled else 1
    sd = dict(encoder(dim, depth, patch))
    sd.update(cls_token=torch.zeros(1, 1, dim),
              pos_embed=torch.randn(1, prefix + grid * grid, dim, generator=g),
              **_norm("norm", dim),
              **{"head.weight": torch.zeros(1000, dim), "head.bias": torch.zeros(1000)})
    if distilled:
        sd.update(dist_token=torch.zeros(1, 1, dim),
                  **{"head_dist.weight": torch.zeros(1000, dim),
                     "head_dist.bias": torch.zeros(1000)})
    return {"model": sd}


def _moco_mlp(prefix: str, dims: list[int]) -> dict[str, torch.Tensor]:
    """MoCo v3's _build_mlp: Linear(no bias) [+ BN + ReLU] per layer, last BN without affine."""
    out: dict[str, torch.Tensor] = {}
    for layer, (d_in, d_out) in enumerate(itertools.pairwise(dims)):
        lin, bn = 3 * layer, 3 * layer + 1
        out[f"{prefix}.{lin}.weight"] = torch.zeros(d_out, d_in)
        last = layer == len(dims) - 2
        if not last:
            out.update({f"{prefix}.{bn}.weight": torch.ones(d_out),
                        f"{prefix}.{bn}.bias": torch.zeros(d_out)})
        out.update({f"{prefix}.{bn}.running_mean": torch.zeros(d_out),
                    f"{prefix}.{bn}.running_var": torch.ones(d_out),
                    f"{prefix}.{bn}.num_batches_tracked": torch.tensor(0)})
    return out


def mocov3(dim: int = 768, depth: int = 12, patch: int = 16, grid: int = 14, **_: int) -> dict:
    """``{"epoch", "arch", "state_dict", ...}`` of MoCo v3 pre-training
    (4096-wide MLPs, 256 out)."""
    enc = dict(encoder(dim, depth, patch))
    enc.update(cls_token=torch.zeros(1, 1, dim), pos_embed=_with_cls(mocov3_sincos(dim, grid)),
               **_norm("norm", dim), **_moco_mlp("head", [dim, 4096, 4096, 256]))
    sd = {f"module.base_encoder.{k}": v for k, v in enc.items()}
    sd.update({f"module.momentum_encoder.{k}": v for k, v in enc.items()})
    sd.update({f"module.{k}": v for k, v in _moco_mlp("predictor", [256, 4096, 256]).items()})
    return {"epoch": 300, "arch": "vit_base", "state_dict": sd, "optimizer": {}}


def beit(dim: int = 768, depth: int = 12, patch: int = 16, grid: int = 14, heads: int = 12,
         per_block: bool = False, **_: int) -> dict:
    """``{"model": ...}`` of BEiT pre-training: q/v biases, layer scale, relative tables with 3
    class-token rows, index buffers, no absolute embeddings, mask token and MIM head."""
    g = torch.Generator().manual_seed(2)
    sd = {k: v for k, v in encoder(dim, depth, patch).items() if not k.endswith("attn.qkv.bias")}
    rows = (2 * grid - 1) ** 2 + 3
    n = grid * grid + 1
    for i in range(depth):
        sd.update({f"blocks.{i}.attn.q_bias": torch.randn(dim, generator=g),
                   f"blocks.{i}.attn.v_bias": torch.randn(dim, generator=g),
                   f"blocks.{i}.gamma_1": torch.rand(dim, generator=g),
                   f"blocks.{i}.gamma_2": torch.rand(dim, generator=g)})
        if per_block:
            sd[f"blocks.{i}.attn.relative_position_bias_table"] = torch.randn(rows, heads,
                                                                              generator=g)
            sd[f"blocks.{i}.attn.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)
    if not per_block:
        sd["rel_pos_bias.relative_position_bias_table"] = torch.randn(rows, heads, generator=g)
        sd["rel_pos_bias.relative_position_index"] = torch.zeros(n, n, dtype=torch.long)
    sd.update(cls_token=torch.zeros(1, 1, dim), mask_token=torch.zeros(1, 1, dim),
              **_norm("norm", dim),
              **{"lm_head.weight": torch.zeros(8192, dim), "lm_head.bias": torch.zeros(8192)})
    return {"model": sd}


def beit_index(r: int) -> torch.Tensor:
    """BEiT's relative_position_index for an r x r grid without the class token: [r*r, r*r]
    rows into the (2r-1)^2 table, row = (dy + r-1) * (2r-1) + (dx + r-1), d = query - key."""
    ys, xs = torch.meshgrid(torch.arange(r), torch.arange(r), indexing="ij")
    coords = torch.stack([ys.flatten(), xs.flatten()])  # [2, r*r]
    rel = coords[:, :, None] - coords[:, None, :] + (r - 1)
    return rel[0] * (2 * r - 1) + rel[1]
