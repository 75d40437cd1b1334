"""The window partition written as plainly as possible: pad, view, permute.

This is the textbook form of what :func:`vitdet_lib.model.vit.window_partition` computes (the
fast form writes the tokens straight into window order and zeroes only the padding, one copy
instead of two). It is the definition to read first, and the fast form is tested equal to it
(``tests/test_window_reference.py``); the walkthrough notebook prints it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def window_partition_reference(x: torch.Tensor, window_size: int
                               ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Split a token grid into non-overlapping r x r windows, zero-padding it to whole windows.

    Args:
        x: [B, H, W, C] token grid.
        window_size: r, the window side in tokens.
    Returns:
        windows [B * num_windows, r * r, C] (windows in row-major order over the padded grid,
        tokens in row-major order inside each window) and the padded size (Hp, Wp).
    """
    b, h, w, c = x.shape
    r = window_size
    pad_h, pad_w = (-h) % r, (-w) % r
    x = F.pad(x, (0, 0, 0, pad_w, 0, pad_h))  # zeros below and to the right; C untouched
    hp, wp = h + pad_h, w + pad_w
    x = x.view(b, hp // r, r, wp // r, r, c)  # [B, window row, row in window, window col, col, C]
    x = x.permute(0, 1, 3, 2, 4, 5)  # [B, window row, window col, r, r, C]
    return x.reshape(b * (hp // r) * (wp // r), r * r, c), (hp, wp)


def window_unpartition_reference(windows: torch.Tensor, window_size: int,
                                 padded_hw: tuple[int, int], hw: tuple[int, int]) -> torch.Tensor:
    """Inverse of :func:`window_partition_reference`.

    Args:
        windows: [B * num_windows, r * r, C].
        window_size: r.
        padded_hw: (Hp, Wp), the padded grid the windows tile.
        hw: (H, W), the grid before padding.
    Returns:
        [B, H, W, C], the padding dropped.
    """
    hp, wp = padded_hw
    h, w = hw
    r = window_size
    c = windows.shape[-1]
    x = windows.view(-1, hp // r, wp // r, r, r, c)  # [B, window row, window col, r, r, C]
    x = x.permute(0, 1, 3, 2, 4, 5).reshape(-1, hp, wp, c)  # back to [B, Hp, Wp, C]
    return x[:, :h, :w].contiguous()
