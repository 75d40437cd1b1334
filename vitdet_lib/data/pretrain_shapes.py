"""A dependency-free stand-in for Fashion-MNIST's pre-training images (the study's fallback when
the Debian data set is not installed)."""
from __future__ import annotations

import numpy as np
import torch


def shape_pretrain_images(num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback pre-training set when Fashion-MNIST is absent: 28x28 grey images of one
    filled shape each (4 classes: square, disk, triangle, ring) at random size and place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    images = np.zeros((num, 28, 28), np.uint8)
    labels = rng.integers(0, 4, num)
    for i, cls in enumerate(labels):
        r = rng.uniform(5, 11)
        cy, cx = rng.uniform(r, 28 - r, 2)
        d = np.hypot(yy - cy, xx - cx)
        if cls == 0:
            m = (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r * 0.8)
        elif cls == 1:
            m = d < r
        elif cls == 2:
            m = (yy - cy + r * 0.8 > 0) & (abs(xx - cx) < (yy - cy + r * 0.8) * 0.6)
            m &= yy < cy + r * 0.8
        else:
            m = (d < r) & (d > r * 0.55)
        images[i][m] = rng.integers(120, 256)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))
