"""Batched image augmentations on the small grey source images, all in torch.

Fashion-MNIST items are 28x28 grey; the encoder sees ``size x size`` (64) 3-channel images. Every
geometric transform (random resized crop, flip, RandAugment's rotate/shear/translate) is one
affine map per image, and the upsampling to ``size`` happens in the same ``grid_sample``, so an
augmented batch costs one resampling of the 28x28 sources. Randomness comes from torch's global
generator only, whose state the checkpoints carry (exact resume).

Tensors: sources ``uint8 [B, h, w]``; grey images ``float [B, 1, size, size]`` in [0, 1];
encoder inputs ``float [B, 3, size, size]`` normalised.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def to_unit(images: torch.Tensor) -> torch.Tensor:
    """uint8 [B, h, w] -> float [B, 1, h, w] in [0, 1]."""
    return images.unsqueeze(1).float().div_(255.0)


def normalize(grey: torch.Tensor, mean: tuple[float, ...], std: tuple[float, ...]) -> torch.Tensor:
    """Grey [B, 1, H, W] in [0, 1] -> replicated, normalised [B, 3, H, W]."""
    m = torch.tensor(mean, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
    s = torch.tensor(std, dtype=grey.dtype, device=grey.device).view(1, 3, 1, 1)
    return (grey.expand(-1, 3, -1, -1) - m) / s


def _uniform(n: int, lo: float, hi: float) -> torch.Tensor:
    return torch.rand(n) * (hi - lo) + lo


def crop_flip_matrix(n: int, scale: tuple[float, float],
                     ratio: tuple[float, float] = (3 / 4, 4 / 3),
                     flip_prob: float = 0.5) -> torch.Tensor:
    """Random-resized-crop + horizontal flip as affine maps, output -> source coordinates.

    Coordinates are ``affine_grid``'s normalised [-1, 1]. The crop's area fraction is uniform in
    ``scale`` and its log aspect ratio uniform in ``log(ratio)``; sides are clipped to the image.

    Returns:
        [n, 3, 3] homogeneous matrices.
    """
    area = _uniform(n, *scale)
    log_r = _uniform(n, math.log(ratio[0]), math.log(ratio[1]))
    w = (area * log_r.exp()).sqrt().clamp(max=1.0)
    h = (area / log_r.exp()).sqrt().clamp(max=1.0)
    cx = (torch.rand(n) * 2 - 1) * (1 - w)
    cy = (torch.rand(n) * 2 - 1) * (1 - h)
    flip = torch.where(torch.rand(n) < flip_prob, -1.0, 1.0)
    m = torch.zeros(n, 3, 3)
    m[:, 0, 0], m[:, 0, 2] = w * flip, cx
    m[:, 1, 1], m[:, 1, 2] = h, cy
    m[:, 2, 2] = 1.0
    return m


def warp(images: torch.Tensor, matrix: torch.Tensor, size: int) -> torch.Tensor:
    """Resample uint8 [B, h, w] sources through [B, 3, 3] maps -> float [B, 1, size, size]."""
    src = to_unit(images)
    grid = F.affine_grid(matrix[:, :2].to(src.dtype), [src.shape[0], 1, size, size],
                         align_corners=False)
    return F.grid_sample(src, grid, mode="bilinear", padding_mode="zeros", align_corners=False)


def brightness_contrast(x: torch.Tensor, brightness: float, contrast: float, prob: float = 1.0
                        ) -> torch.Tensor:
    """Colour-jitter's brightness and contrast (factors uniform in ``1 +- strength``) applied with
    probability ``prob`` per image. x: [B, 1, H, W] in [0, 1]."""
    n = x.shape[0]
    apply = (torch.rand(n) < prob).float()
    b = 1 + apply * _uniform(n, -brightness, brightness)
    c = 1 + apply * _uniform(n, -contrast, contrast)
    x = (x * b.view(-1, 1, 1, 1)).clamp(0, 1)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    return ((x - mean) * c.view(-1, 1, 1, 1) + mean).clamp(0, 1)


def gaussian_blur(x: torch.Tensor, sigma: tuple[float, float], prob: float) -> torch.Tensor:
    """Blur each image with probability ``prob``, sigma uniform in ``sigma`` (pixels).
    x: [B, 1, H, W]; one separable depthwise convolution for the whole batch."""
    n = x.shape[0]
    apply = torch.rand(n) < prob
    s = _uniform(n, *sigma)
    if not apply.any():
        return x
    radius = max(1, math.ceil(3 * sigma[1]))
    offsets = torch.arange(-radius, radius + 1, dtype=x.dtype)
    kernel = torch.exp(-0.5 * (offsets[None] / s[:, None]) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # [B, k]
    ident = torch.zeros_like(kernel)
    ident[:, radius] = 1.0
    kernel = torch.where(apply[:, None], kernel, ident)
    y = x.transpose(0, 1)  # [1, B, H, W]: the batch as channels of a depthwise conv
    y = F.pad(y, (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(n, 1, 1, -1), groups=n)
    y = F.conv2d(y, kernel.view(n, 1, -1, 1), groups=n)
    return y.transpose(0, 1)


def resize(images: torch.Tensor, size: int) -> torch.Tensor:
    """The un-augmented view: uint8 [B, h, w] -> float [B, 1, size, size], bilinear, through
    the same resampling as the augmented views (outside the source is black, as the garments'
    background)."""
    return warp(images, torch.eye(3).expand(len(images), 3, 3), size)


def solarize(x: torch.Tensor, prob: float, threshold: float = 0.5) -> torch.Tensor:
    """Invert pixels above ``threshold`` with probability ``prob`` per image."""
    apply = (torch.rand(x.shape[0]) < prob).view(-1, 1, 1, 1)
    return torch.where(apply & (x >= threshold), 1.0 - x, x)


# ----------------------------------------------------------------------------- RandAugment-lite

GEOMETRIC_OPS = ("rotate", "shear_x", "shear_y", "translate_x", "translate_y")
PHOTOMETRIC_OPS = ("identity", "brightness", "contrast", "solarize", "posterize", "autocontrast")
RAND_AUGMENT_OPS = GEOMETRIC_OPS + PHOTOMETRIC_OPS


def _op_matrix(op: str, level: torch.Tensor) -> torch.Tensor:
    """[n, 3, 3] maps for one geometric op; ``level`` in [-1, 1] per image (sign included)."""
    n = level.shape[0]
    m = torch.eye(3).repeat(n, 1, 1)
    if op == "rotate":  # up to 30 degrees
        a = level * math.radians(30)
        m[:, 0, 0], m[:, 0, 1], m[:, 1, 0], m[:, 1, 1] = a.cos(), -a.sin(), a.sin(), a.cos()
    elif op == "shear_x":
        m[:, 0, 1] = 0.3 * level
    elif op == "shear_y":
        m[:, 1, 0] = 0.3 * level
    elif op == "translate_x":  # up to 45% of the side (timm's translate_pct); [-1, 1] spans 2
        m[:, 0, 2] = 0.9 * level
    elif op == "translate_y":
        m[:, 1, 2] = 0.9 * level
    return m


def _photometric(x: torch.Tensor, op: str, level: torch.Tensor, mag: float) -> torch.Tensor:
    lv = level.view(-1, 1, 1, 1)
    if op == "brightness":
        return (x * (1 + 0.9 * lv)).clamp(0, 1)
    if op == "contrast":
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        return ((x - mean) * (1 + 0.9 * lv) + mean).clamp(0, 1)
    if op == "solarize":  # threshold falls from 1 to 0 as the magnitude grows
        return torch.where(x >= 1.0 - mag, 1.0 - x, x)
    if op == "posterize":  # 8 bits down to 4 at full magnitude
        levels = 2 ** (8 - round(4 * mag))
        return torch.floor(x * (levels - 1) + 0.5) / (levels - 1)
    if op == "autocontrast":
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return torch.where(hi > lo, (x - lo) / (hi - lo).clamp(min=1e-6), x)
    return x


def rand_augment(images: torch.Tensor, crop: torch.Tensor, size: int, num_ops: int,
                 magnitude: float) -> torch.Tensor:
    """RandAugment with ``num_ops`` ops per image at ``magnitude``/10 (random sign), on top of
    the crop maps ``crop`` [B, 3, 3]: geometric ops are folded into the same warp, photometric
    ops applied after it. Returns [B, 1, size, size] in [0, 1]."""
    n = images.shape[0]
    mag = magnitude / 10.0
    ops = torch.randint(len(RAND_AUGMENT_OPS), (n, num_ops))
    signs = torch.where(torch.rand(n, num_ops) < 0.5, -1.0, 1.0)
    matrix = crop
    for j in range(num_ops):
        for k, op in enumerate(GEOMETRIC_OPS):
            sel = (ops[:, j] == k).float() * signs[:, j] * mag
            matrix = matrix @ _op_matrix(op, sel)
    x = warp(images, matrix, size)
    for j in range(num_ops):
        for k, op in enumerate(PHOTOMETRIC_OPS, start=len(GEOMETRIC_OPS)):
            sel = ops[:, j] == k
            if sel.any():
                x = torch.where(sel.view(-1, 1, 1, 1),
                                _photometric(x, op, signs[:, j] * mag, mag), x)
    return x
