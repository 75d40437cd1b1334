"""Which patches a masked-image-modelling step hides.

MAE hides a uniformly random 75% of the patches (the encoder never sees them); BEiT hides
rectangular blocks until ~40% are hidden (the encoder sees mask tokens there). Both draw from
torch's global generator, which the checkpoints carry.
"""
from __future__ import annotations

import math

import torch


def random_masking(batch: int, num_patches: int, mask_ratio: float,
                   device: torch.device | None = None
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """MAE's per-sample random masking by argsort of uniform noise.

    Returns:
        ids_keep [B, L_keep] (patch indices the encoder sees, in noise order),
        mask [B, N] (1 = hidden, in patch order),
        ids_restore [B, N] (un-shuffles the [kept, masked] sequence back to patch order).
    """
    keep = int(num_patches * (1 - mask_ratio))
    noise = torch.rand(batch, num_patches, device=device)
    ids_shuffle = noise.argsort(dim=1)
    ids_restore = ids_shuffle.argsort(dim=1)
    mask = torch.ones(batch, num_patches, device=device)
    mask[:, :keep] = 0
    return ids_shuffle[:, :keep], torch.gather(mask, 1, ids_restore), ids_restore


def blockwise_mask(grid: int, num_masked: int, min_block: int = 4, min_aspect: float = 0.3,
                   max_attempts: int = 10) -> torch.Tensor:
    """BEiT's blockwise masking of one ``grid x grid`` patch map.

    Repeatedly picks a block of area uniform in [``min_block``, still-needed] and log-uniform
    aspect ratio in [``min_aspect``, 1/``min_aspect``] at a random place, keeping it when it adds
    at least one new patch without overshooting; stops at ``num_masked`` patches or when
    ``max_attempts`` tries in a row add nothing (so a few percent fewer can be masked, as in BEiT).

    Returns:
        bool [grid, grid], True = masked.
    """
    mask = torch.zeros(grid, grid, dtype=torch.bool)
    count = 0
    log_lo, log_hi = math.log(min_aspect), math.log(1 / min_aspect)
    while count < num_masked:
        remaining = num_masked - count
        added = 0
        for _ in range(max_attempts):
            area = float(torch.empty(()).uniform_(min_block, max(min_block, remaining)))
            aspect = math.exp(float(torch.empty(()).uniform_(log_lo, log_hi)))
            h = round(math.sqrt(area * aspect))
            w = round(math.sqrt(area / aspect))
            if not (0 < h < grid and 0 < w < grid):
                continue
            top = int(torch.randint(0, grid - h + 1, ()))
            left = int(torch.randint(0, grid - w + 1, ()))
            block = mask[top:top + h, left:left + w]
            new = h * w - int(block.sum())
            if 0 < new <= remaining:
                block.fill_(True)
                added = new
                break
        if added == 0:
            break
        count += added
    return mask


def blockwise_masks(batch: int, grid: int, mask_ratio: float, min_block: int = 4) -> torch.Tensor:
    """``blockwise_mask`` per image at ``round(mask_ratio * grid^2)`` patches: bool [B, N]."""
    num = round(mask_ratio * grid * grid)
    return torch.stack([blockwise_mask(grid, num, min_block).flatten() for _ in range(batch)])

