"""Position resizing written out plainly with ``F.interpolate``, as the expected values of tests
(comparing the library's resize with itself could not catch a transposed or mis-reshaped grid).

Conventions (the references the published code bases use):
- absolute embeddings: bicubic over the token grid, ``align_corners=False`` (timm, MAE, DeiT);
- relative tables: bicubic over the plane of (row offset, column offset) with the corner
  offsets fixed, ``align_corners=True`` (offset -(r-1) maps to -(r'-1), 0 to 0).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def abs_pos_reference(stored: torch.Tensor, side: int, new: tuple[int, int],
                      prefix: int = 0) -> torch.Tensor:
    """stored [1, prefix + side*side, C] (row-major tokens) -> [1, new_h, new_w, C]."""
    channels = stored.shape[-1]
    grid = stored[0, prefix:].reshape(side, side, channels)  # [row, col, C]
    planes = grid.permute(2, 0, 1)[None].float()  # [1, C, row, col]
    out = F.interpolate(planes, size=new, mode="bicubic", align_corners=False)
    return out[0].permute(1, 2, 0)[None]


def rel_table_reference(table: torch.Tensor, side: int, new_side: int) -> torch.Tensor:
    """table [side*side, heads], row = (dy + r-1) * side + (dx + r-1) -> [new_side**2, heads]."""
    heads = table.shape[1]
    planes = table.reshape(side, side, heads).permute(2, 0, 1)[None].float()  # [1, heads, dy, dx]
    out = F.interpolate(planes, size=(new_side, new_side), mode="bicubic", align_corners=True)
    return out[0].permute(1, 2, 0).reshape(new_side * new_side, heads)
