"""Position information: absolute embeddings and relative-position bias tables.

Both are stored at one grid size and resized when the grid changes (pre-training -> detection,
or an input of another size). The same functions serve the forward pass and checkpoint loading,
so a converted checkpoint and a live resize can never disagree.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def resize_abs_pos(pos: torch.Tensor, grid: tuple[int, int],
                   num_prefix_tokens: int = 0) -> torch.Tensor:
    """Resize absolute position embeddings to a token grid.

    Args:
        pos: [1, N, C] or [1, H, W, C] (N = num_prefix_tokens + H*W, square stored grid).
        grid: target (H', W').
        num_prefix_tokens: leading class/distillation tokens to drop (never resized).
    Returns:
        [1, H', W', C]; bicubic interpolation, or the input itself when sizes match.
    """
    if pos.dim() == 3:
        tokens = pos[:, num_prefix_tokens:]
        side = math.isqrt(tokens.shape[1])
        if side * side != tokens.shape[1]:
            raise ValueError(f"absolute position embedding with {tokens.shape[1]} grid tokens "
                             f"(after {num_prefix_tokens} prefix tokens) is not a square grid")
        pos = tokens.reshape(1, side, side, -1)
    if tuple(pos.shape[1:3]) == tuple(grid):
        return pos
    out = F.interpolate(pos.permute(0, 3, 1, 2).float(), size=grid, mode="bicubic",
                        align_corners=False)
    return out.permute(0, 2, 3, 1).to(pos.dtype)


def rel_table_side(table: torch.Tensor) -> int:
    """Side 2r-1 of a square relative-position table [(2r-1)^2, heads]."""
    side = math.isqrt(table.shape[0])
    if side * side != table.shape[0]:
        raise ValueError(f"relative position table with {table.shape[0]} rows is not square")
    return side


def resize_rel_table(table: torch.Tensor, side: int | tuple[int, int]) -> torch.Tensor:
    """Resize a relative-position table [(2r-1)^2, heads] to [side_h * side_w, heads].

    Bicubic interpolation over the 2-D relative-offset plane (SciPy's removed ``interp2d`` used a
    cubic spline on the same plane; plain bilinear on the flattened table is the known trap).
    """
    sh, sw = (side, side) if isinstance(side, int) else side
    src = rel_table_side(table)
    if (src, src) == (sh, sw):
        return table
    heads = table.shape[1]
    plane = table.T.reshape(1, heads, src, src).float()
    out = F.interpolate(plane, size=(sh, sw), mode="bicubic", align_corners=True)
    return out.reshape(heads, sh * sw).T.to(table.dtype)


def rel_pos_rows(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """The relative-position bias of an h x w grid in factored form: its row-offset blocks.

    Args:
        table: [(2r-1)^2, heads]; resized (bicubic) when its offsets do not cover the grid,
            centre-cropped when they more than cover it.
        grid: (h, w).
    Returns:
        rows [heads, 2h-1, w, w] with rows[:, h-1-i1+i2, j1, j2] = table[(i1-i2, j1-j2)]: the
        [w, w] Toeplitz block between query grid-row i1 and key grid-row i2. 25 MB for ViT-B at
        64x64, where the dense bias is 805 MB.
    """
    h, w = grid
    side = rel_table_side(table)
    need = max(2 * h - 1, 2 * w - 1)
    if side < need:
        table = resize_rel_table(table, need)
        side = need
    heads = table.shape[1]
    plane = table.T.reshape(heads, side, side)
    c = side // 2  # offset 0 sits in the middle of the table
    plane = plane[:, c - (h - 1): c + h, c - (w - 1): c + w]  # [heads, 2h-1, 2w-1]
    # unfold: U[a, q, s] = plane[a, q + s]; flipping a and q and swapping q, s gives
    # rows[a', j1, j2] = plane[2h-2-a', j1 - j2 + w-1] (row offset i1-i2 sits at a' = h-1-i1+i2)
    return plane.unfold(2, w, 1).flip(1, 2).transpose(2, 3).contiguous()


def expand_rows(rows: torch.Tensor, first: int, last: int,
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Query grid-rows ``first:last`` of the dense bias, without autograd:
    [heads, (last-first)*w, h*w]."""
    heads, two_h, w, _ = rows.shape
    h = (two_h + 1) // 2
    if out is None:
        out = rows.new_empty(heads, last - first, w, h, w)
    else:
        out = out.view(heads, last - first, w, h, w)
    for local, i1 in enumerate(range(first, last)):
        out[:, local].copy_(rows[:, h - 1 - i1: 2 * h - 1 - i1].transpose(1, 2))
    return out.view(heads, (last - first) * w, h * w)


def add_rows_grad(grad_rows: torch.Tensor, grad: torch.Tensor, first: int) -> None:
    """Adjoint of :func:`expand_rows`: add grad [heads, c*w, h*w] of query grid-rows
    ``first:first+c`` into grad_rows [heads, 2h-1, w, w]."""
    heads, two_h, w, _ = grad_rows.shape
    h = (two_h + 1) // 2
    grad = grad.view(heads, -1, w, h, w)
    for local in range(grad.shape[1]):
        i1 = first + local
        grad_rows[:, h - 1 - i1: 2 * h - 1 - i1].add_(grad[:, local].transpose(1, 2))


class _ExpandRows(torch.autograd.Function):
    """[heads, 2h-1, w, w] row-offset blocks -> the dense [heads, h*w, h*w] bias, written as h
    contiguous-row copies (and h slice additions in backward): autograd through a stack of h
    strided slices would allocate a zero table per slice in backward."""

    @staticmethod
    def forward(ctx, rows: torch.Tensor) -> torch.Tensor:
        ctx.rows_shape = rows.shape
        return expand_rows(rows, 0, (rows.shape[1] + 1) // 2)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        grad_rows = grad.new_zeros(ctx.rows_shape)
        add_rows_grad(grad_rows, grad.contiguous(), 0)
        return grad_rows


def rel_pos_bias(table: torch.Tensor, grid: tuple[int, int]) -> torch.Tensor:
    """Dense relative-position bias for all token pairs of an h x w grid.

    Args:
        table: [(2r-1)^2, heads] (see :func:`rel_pos_rows`).
        grid: (h, w).
    Returns:
        [heads, h*w, h*w] with bias[:, (i1, j1), (i2, j2)] = table[(i1-i2, j1-j2)].

    No [N, N] index is stored or gathered. The bias is a block-Toeplitz matrix: each row
    offset's [w, w] Toeplitz block is built from an unfolded view of the table
    (:func:`rel_pos_rows`), then the h x h blocks are copied out row by row with contiguous inner
    rows (a single strided gather from the unfolded table runs ~20x slower). Global attention on
    CPU never builds it: see :class:`GridBias`.
    """
    return _ExpandRows.apply(rel_pos_rows(table, grid))


class GridBias:
    """A relative-position bias over an h x w token grid kept factored (:func:`rel_pos_rows`).

    Global attention over a 64x64 grid would need an 805 MB dense bias (ViT-B, fp32) plus as much
    again for its gradient, shared by all global blocks; :func:`~.attention.biased_attention`
    instead builds the bias rows of one query chunk at a time from ``rows`` and adds the bias
    gradient straight into ``rows``' gradient.
    """

    def __init__(self, rows: torch.Tensor) -> None:
        if rows.dim() != 4 or rows.shape[2] != rows.shape[3] or rows.shape[1] % 2 == 0:
            raise ValueError(f"GridBias rows must be [heads, 2h-1, w, w], got {tuple(rows.shape)}")
        self.rows = rows
        self.h = (rows.shape[1] + 1) // 2
        self.w = rows.shape[-1]

    @classmethod
    def from_table(cls, table: torch.Tensor, grid: tuple[int, int]) -> GridBias:
        return cls(rel_pos_rows(table, grid))

    @property
    def heads(self) -> int:
        return self.rows.shape[0]

    def dense(self) -> torch.Tensor:
        """[1, heads, N, N], differentiable with respect to ``rows``."""
        return _ExpandRows.apply(self.rows)[None]


def sincos_pos_embed(embed_dim: int, grid: int) -> torch.Tensor:
    """Fixed 2-D sin-cos embeddings [grid*grid, C] (MAE's layout), for tests and pre-training."""
    if embed_dim % 4:
        raise ValueError("embed_dim must be divisible by 4 for 2-D sin-cos embeddings")
    ys, xs = torch.meshgrid(torch.arange(grid, dtype=torch.float64),
                            torch.arange(grid, dtype=torch.float64), indexing="ij")
    omega = 1.0 / 10000 ** (torch.arange(embed_dim // 4, dtype=torch.float64) / (embed_dim / 4))

    def enc(v: torch.Tensor) -> torch.Tensor:
        out = v.reshape(-1, 1) * omega[None]
        return torch.cat([out.sin(), out.cos()], dim=1)

    # MAE encodes the width coordinate in the first half of the channels
    return torch.cat([enc(xs), enc(ys)], dim=1).float()
