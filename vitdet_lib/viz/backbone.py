"""Walkthrough figures of the backbone: patches, windows, attention maps, relative-position
biases and the multi-scale pyramid."""
from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from matplotlib.colors import ListedColormap
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle
from torch import nn

from ..model import (
    GridBias,
    ViT,
    rel_pos_bias,
    resize_abs_pos,
    window_partition,
    window_unpartition,
)
from ..model.pos import sincos_pos_embed
from ._draw import grid_lines, new_axes, to_rgb
from .widgets import Choice, Slider

# ----------------------------------------------------------------------------- 1. patches


def plot_patches(pretrain_image: torch.Tensor, image: torch.Tensor, patch_size: int,
                 query: int = 0) -> Figure:
    """Token grids at pre-training and detection resolution, and what resizing absolute position
    embeddings does (a fixed sin-cos table stands in for pre-trained embeddings).

    Args:
        pretrain_image, image: [3, h, w] and [3, H, W] in [0, 1].
        patch_size: p; grids are h/p x w/p and H/p x W/p.
        query: index of the detection-grid token whose embedding similarity is shown.
    """
    g0 = pretrain_image.shape[-1] // patch_size
    gh, gw = image.shape[-2] // patch_size, image.shape[-1] // patch_size
    fig, ax = new_axes(3)
    ax = ax[0]
    ax[0].imshow(to_rgb(pretrain_image))
    grid_lines(ax[0], *pretrain_image.shape[-2:], patch_size)
    ax[0].set_title(f"pre-training: {g0}x{g0} = {g0 * g0} tokens")
    ax[1].imshow(to_rgb(image))
    grid_lines(ax[1], *image.shape[-2:], patch_size)
    ax[1].set_title(f"detection: {gh}x{gw} = {gh * gw} tokens")
    pos = sincos_pos_embed(64, g0).view(1, g0, g0, 64)
    resized = resize_abs_pos(pos, (gh, gw))[0].reshape(gh * gw, 64)  # [H*W, C]
    q = min(query, gh * gw - 1)
    sim = F.cosine_similarity(resized[q][None], resized, dim=-1).view(gh, gw)
    ax[2].imshow(sim.numpy(), cmap="viridis")
    ax[2].plot(q % gw, q // gw, "r+", ms=12)
    ax[2].set_title(f"{g0}x{g0} abs-pos table resized to {gh}x{gw}:\ncosine similarity to +")
    for a in ax:
        a.set_xticks([]), a.set_yticks([])
    return fig


# ----------------------------------------------------------------------------- 2. windows


def window_layout(grid: tuple[int, int], window_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Which window each token of the padded grid falls in, computed with the model's own
    ``window_partition``/``window_unpartition``.

    Returns:
        window id [Hp, Wp] (int) and padding flag [Hp, Wp] (bool).
    """
    h, w = grid
    ids = torch.arange(1, h * w + 1, dtype=torch.float32).view(1, h, w, 1)
    windows, padded = window_partition(ids, window_size)  # [num_windows, r*r, 1]
    win = torch.arange(windows.shape[0], dtype=torch.float32)[:, None, None].expand_as(windows)
    win_grid = window_unpartition(win.contiguous(), window_size, padded, padded)[0, ..., 0]
    pad_grid = window_unpartition((windows == 0).float(), window_size, padded, padded)[0, ..., 0]
    return win_grid.long(), pad_grid.bool()


def plot_window_partition(grid: int, window_size: int) -> Figure:
    """A grid x grid token map split into window_size-sided windows, padding hatched."""
    win, pad = window_layout((grid, grid), window_size)
    hp, wp = win.shape
    n = int(win.max()) + 1
    fig, ax = new_axes(1, size=4.6)
    ax = ax[0, 0]
    cmap = ListedColormap(np.random.default_rng(0).uniform(0.35, 0.95, size=(max(n, 1), 3)))
    ax.imshow(win.numpy(), cmap=cmap, vmin=-0.5, vmax=n - 0.5)
    ys, xs = np.nonzero(pad.numpy())
    ax.scatter(xs, ys, marker="x", s=max(4, 900 / hp), c="k", lw=0.6)
    grid_lines(ax, hp, wp, 1, color="w", lw=0.3)
    grid_lines(ax, hp, wp, window_size, color="k", lw=1.5)
    ax.add_patch(Rectangle((-0.5, -0.5), grid, grid, fill=False, ec="r", lw=2))
    ax.set_title(f"{grid}x{grid} tokens -> padded {hp}x{wp}: {n} windows of "
                 f"{window_size}x{window_size}\n{int(pad.sum())} padding tokens (x) = "
                 f"{pad.float().mean():.0%} of the attention work; red = real grid", fontsize=9)
    ax.set_xticks([]), ax.set_yticks([])
    return fig


# ----------------------------------------------------------------------------- 3. attention


def capture_block_inputs(vit: ViT, image: torch.Tensor) -> dict[int, tuple[torch.Tensor, Any]]:
    """Run ``vit`` on one image [3, H, W] (already normalised) and keep each block's inputs:
    block index -> (x [1, h, w, C], attention mask as the block received it)."""
    captured: dict[int, tuple[torch.Tensor, Any]] = {}
    hooks = [blk.register_forward_pre_hook(
        lambda _m, args, i=i: captured.__setitem__(i, (args[0].detach(), args[1])))
        for i, blk in enumerate(vit.blocks)]
    try:
        with torch.no_grad():
            vit.eval()(image[None])
    finally:
        for h in hooks:
            h.remove()
    return captured


def attention_probs(attn: nn.Module, tokens: torch.Tensor,
                    mask: torch.Tensor | GridBias | None) -> torch.Tensor:
    """softmax(q k^T / sqrt(d) + mask) of an ``Attention`` module, spelled out (the module itself
    calls SDPA, which never materialises it).

    Args:
        tokens: [B, N, C] (already layer-normed); mask: broadcastable to [B, heads, N, N].
    Returns:
        [B, heads, N, N]; ``probs @ v`` reproduces the module's attention output.
    """
    if isinstance(mask, GridBias):
        mask = mask.dense()  # global blocks on CPU receive the bias factored
    b, n, c = tokens.shape
    qkv = attn.qkv(tokens).view(b, n, 3, attn.num_heads, c // attn.num_heads).permute(2, 0, 3, 1, 4)
    q, k, _ = qkv.unbind(0)
    scores = q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    return scores.softmax(-1)


def attention_map(vit: ViT, captured: dict[int, tuple[torch.Tensor, Any]], block: int,
                  query: tuple[int, int]) -> torch.Tensor:
    """Attention weights of one query token over the whole grid in one block: [heads, h, w]
    (zero outside the query's window for a windowed block)."""
    blk = vit.blocks[block]
    x, mask = captured[block]
    _, h, w, c = x.shape
    i, j = query
    with torch.no_grad():
        y = blk.norm1(x)
        if not blk.window_size:
            probs = attention_probs(blk.attn, y.reshape(1, h * w, c), mask)  # [1, heads, N, N]
            return probs[0, :, i * w + j].view(-1, h, w)
        r = blk.window_size
        windows, (hp, wp) = window_partition(y, r)
        k = (i // r) * (wp // r) + j // r  # the query's window
        wmask = None if mask is None else mask[k: k + 1] if mask.shape[0] > 1 else mask
        row = attention_probs(blk.attn, windows[k: k + 1], wmask)[0, :, (i % r) * r + j % r]
        full = torch.zeros(row.shape[0], hp, wp)
        top, left = (i // r) * r, (j // r) * r
        full[:, top: top + r, left: left + r] = row.view(-1, r, r)
        return full[:, :h, :w]


class AttentionExplorer:
    """Attention maps of a windowed and a global block for one image (inputs captured once)."""

    def __init__(self, vit: ViT, image: torch.Tensor, normalised: torch.Tensor) -> None:
        side = normalised.shape[-1]
        if image.shape[-2:] != normalised.shape[-2:]:  # show what the backbone saw: resized, padded
            h, w = image.shape[-2:]
            size = (round(h * side / max(h, w)), round(w * side / max(h, w)))
            image = F.interpolate(image[None], size=size, mode="bilinear")[0]
            image = F.pad(image, (0, side - size[1], 0, side - size[0]))
        self.vit, self.image = vit, image
        self.captured = capture_block_inputs(vit, normalised)
        self.window_blocks = [i for i, b in enumerate(vit.blocks) if b.window_size]
        self.global_blocks = [i for i, b in enumerate(vit.blocks) if not b.window_size]
        self.grid = tuple(self.captured[0][0].shape[1:3])

    def controls(self) -> dict[str, Slider | Choice]:
        h, w = self.grid
        return {"row": Slider(0, h - 1, 1, h // 2), "col": Slider(0, w - 1, 1, w // 2 + 1),
                "head": Choice(["mean", *range(self.vit.cfg.num_heads)], "mean"),
                "window_block": Choice(self.window_blocks or [None],
                                       (self.window_blocks or [None])[0]),
                "global_block": Choice(self.global_blocks or [None],
                                       (self.global_blocks or [None])[-1])}

    def plot(self, row: int, col: int, head: Any, window_block: int, global_block: int) -> Figure:
        p = self.vit.patch_size
        fig, ax = new_axes(3)
        ax = ax[0]
        ax[0].imshow(to_rgb(self.image))
        ax[0].add_patch(Rectangle((col * p - 0.5, row * p - 0.5), p, p, fill=False, ec="r", lw=2))
        ax[0].set_title(f"query token ({row}, {col})")
        for a, blk in ((ax[1], window_block), (ax[2], global_block)):
            if blk is None:  # a model with one attention kind only (window-only, global-only)
                a.set_title("no block of this kind")
                continue
            m = attention_map(self.vit, self.captured, blk, (row, col))
            m = m.mean(0) if head == "mean" else m[int(head)]
            a.imshow(to_rgb(self.image), alpha=0.35)
            up = m.repeat_interleave(p, 0).repeat_interleave(p, 1).numpy()
            a.imshow(np.ma.masked_equal(up, 0), cmap="magma", alpha=0.85)
            r = self.vit.blocks[blk].window_size
            kind = f"windowed (r={r})" if r else "global"
            a.set_title(f"block {blk}, {kind}\nmax weight {m.max():.3f}, head {head}", fontsize=9)
        for a in ax:
            a.set_xticks([]), a.set_yticks([])
        return fig


# ----------------------------------------------------------------------------- 4. rel-pos


def plot_rel_pos(vit: ViT, grid: tuple[int, int], head: int = 0, row: int = 5,
                 col: int = 5) -> Figure:
    """The two shared relative-position tables (learned values) and how one table becomes a
    dense bias on the ``grid`` of tokens: the bias row of a query token is the table re-centred
    on that token."""
    hw = tuple(grid)
    fig, ax = new_axes(4)
    ax = ax[0]
    n_win = sum(1 for b in vit.blocks if b.window_size)
    n_global = len(vit.blocks) - n_win
    for a, table, label, users in ((ax[0], vit.rel_pos_window_table, "window", n_win),
                                   (ax[1], vit.rel_pos_global_table, "global", n_global)):
        if table is None:
            a.set_title(f"no {label} table"), a.axis("off")
            continue
        side = math.isqrt(table.shape[0])
        t = table.detach()[:, head].view(side, side).numpy()
        im = a.imshow(t, cmap="coolwarm", vmin=-abs(t).max() - 1e-9, vmax=abs(t).max() + 1e-9)
        fig.colorbar(im, ax=a, shrink=0.7)
        a.set_title(f"{label} table {side}x{side}, head {head}\nshared by {users} blocks "
                    f"({table.numel()} params)", fontsize=9)
    # a synthetic distance-decay table makes the indexing visible whatever the learned values
    g = max(hw)
    dy, dx = torch.meshgrid(torch.arange(-(g - 1), g), torch.arange(-(g - 1), g), indexing="ij")
    synthetic = -(dy.float() ** 2 + dx.float() ** 2).sqrt().reshape(-1, 1) / g
    ax[2].imshow(synthetic.view(2 * g - 1, 2 * g - 1).numpy(), cmap="viridis")
    ax[2].set_title(f"synthetic table -|offset|\n({2 * g - 1}x{2 * g - 1} offsets)", fontsize=9)
    row, col = min(row, hw[0] - 1), min(col, hw[1] - 1)
    bias = rel_pos_bias(synthetic, hw)[0, row * hw[1] + col].view(*hw)
    ax[3].imshow(bias.numpy(), cmap="viridis")
    ax[3].plot(col, row, "r+", ms=12)
    ax[3].set_title(f"rel_pos_bias row of query ({row}, {col})\non the {hw[0]}x{hw[1]} grid",
                    fontsize=9)
    for a in ax:
        a.set_xticks([]), a.set_yticks([])
    return fig


# ----------------------------------------------------------------------------- 5. pyramid


def pyramid_features(backbone: nn.Module,
                     normalised: torch.Tensor) -> dict[str, dict[str, torch.Tensor]]:
    """The ViT's 4 quarter outputs, the adapter's 4 levels and the FPN's outputs for one image."""
    from collections import OrderedDict

    with torch.no_grad():
        backbone.eval()
        vit_out = backbone.vit(normalised[None])
        adapted = backbone.adapter(vit_out)
        fpn = backbone.fpn(OrderedDict((str(i), m) for i, m in enumerate(adapted)))
    return {"vit": {f"block {i}": f for i, f in zip(backbone.vit.out_indexes, vit_out)},
            "adapter": {str(i): f for i, f in enumerate(adapted)}, "fpn": dict(fpn)}


def plot_pyramid(features: dict[str, dict[str, torch.Tensor]], image_size: int,
                 stage: str = "adapter", channel: int = -1) -> Figure:
    """One row of feature maps (channel ``channel``, or the per-position L2 norm when -1)."""
    maps = features[stage]
    fig, ax = new_axes(len(maps), size=2.8)
    for a, (name, f) in zip(ax[0], maps.items()):
        m = f[0].norm(dim=0) if channel < 0 else f[0, min(channel, f.shape[1] - 1)]
        a.imshow(m.numpy(), cmap="viridis")
        a.set_title(f"{stage} {name}: C x H x W = {f.shape[1]}x{f.shape[2]}x{f.shape[3]}\n"
                    f"stride {image_size // f.shape[-1]}", fontsize=9)
        a.set_xticks([]), a.set_yticks([])
    return fig
