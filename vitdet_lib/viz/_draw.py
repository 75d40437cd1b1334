"""Drawing helpers shared by the walkthrough's figures (a private module of ``viz``; its
functions are what the figure modules call)."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle


def new_axes(ncols: int, nrows: int = 1, size: float = 3.2) -> tuple[Figure, np.ndarray]:
    """A figure of ``nrows`` x ``ncols`` square panels and its axes array [nrows, ncols]."""
    fig = Figure(figsize=(size * ncols, size * nrows), layout="constrained")
    return fig, fig.subplots(nrows, ncols, squeeze=False)


def to_rgb(image: torch.Tensor) -> np.ndarray:
    """[3, H, W] float in [0, 1] (or uint8) -> [H, W, 3] float for imshow."""
    img = image.float() / 255 if image.dtype == torch.uint8 else image.float()
    return img.permute(1, 2, 0).clamp(0, 1).numpy()


def grid_lines(ax: Any, h: int, w: int, step: int, color: str = "w", lw: float = 0.5) -> None:
    """Lines every ``step`` pixels over an h x w image, on pixel borders."""
    for y in range(0, h + 1, step):
        ax.axhline(y - 0.5, color=color, lw=lw)
    for x in range(0, w + 1, step):
        ax.axvline(x - 0.5, color=color, lw=lw)


def draw_instances(ax: Any, image: torch.Tensor, masks: torch.Tensor, boxes: torch.Tensor,
                    labels: Sequence[str]) -> None:
    """The image with each instance's mask tinted and its box and label drawn.

    Args:
        image: [3, H, W]; masks: [N, H, W] (bool or 0/1); boxes: [N, 4] x0, y0, x1, y1 in pixels.
    """
    rgb = to_rgb(image).copy()
    colours = np.random.default_rng(1).uniform(0.2, 1.0, size=(max(len(masks), 1), 3))
    for m, c in zip(masks.bool().numpy(), colours):
        rgb[m] = 0.45 * rgb[m] + 0.55 * c
    ax.imshow(rgb)
    for (x0, y0, x1, y1), c, text in zip(boxes.tolist(), colours, labels):
        ax.add_patch(Rectangle((x0, y0), x1 - x0, y1 - y0, fill=False, ec=c, lw=1.5))
        ax.text(x0, y0, text, color="k", fontsize=6, va="bottom", backgroundcolor=(*c, 0.7))
    ax.set_xticks([]), ax.set_yticks([])
