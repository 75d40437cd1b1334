"""From the ViT's single-scale token grids to the detector's feature maps.

The multi-scale adapter (from XCiT; docs/paper.md, "Multi-scale adapter") turns the 4 quarter
outputs (all stride p) into a pyramid of strides p/4, p/2, p, 2p; a standard FPN with BN
follows. The single-scale variant of Table 2 keeps only the last block's stride-p map.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from torchvision.ops.feature_pyramid_network import FeaturePyramidNetwork, LastLevelMaxPool

from .vit import ViT


@dataclass(frozen=True)
class FeatureSpec:
    """One output feature map of a backbone: its channels and stride w.r.t. the input."""

    channels: int
    stride: int


def _group_norm(channels: int) -> nn.GroupNorm:
    return nn.GroupNorm(math.gcd(32, channels), channels)


class MultiScaleAdapter(nn.Module):
    """Four modules, one per quarter, all keeping the ViT width C:
    x4 (deconv -> GroupNorm -> GELU -> deconv), x2 (deconv), x1 (identity), x1/2 (max-pool)."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.up4 = nn.Sequential(
            nn.ConvTranspose2d(dim, dim, 2, stride=2), _group_norm(dim), nn.GELU(),
            nn.ConvTranspose2d(dim, dim, 2, stride=2),
        )
        self.up2 = nn.ConvTranspose2d(dim, dim, 2, stride=2)
        self.same = nn.Identity()
        self.down2 = nn.MaxPool2d(2, stride=2)

    def forward(self, feats: list[torch.Tensor]) -> list[torch.Tensor]:
        """4 maps [B, C, h, w] -> [B, C, 4h, 4w], [B, C, 2h, 2w], [B, C, h, w], [B, C, h/2, w/2]."""
        return [m(f) for m, f in zip((self.up4, self.up2, self.same, self.down2), feats)]


class SingleScaleNeck(nn.Module):
    """Table 2's single-scale baseline: the last block's stride-p map projected to the head width
    (1x1 conv + norm, 3x3 conv + norm), so RPN and RoIAlign see one level only."""

    def __init__(self, dim: int, out_channels: int,
                 norm_layer: Callable[..., nn.Module] | None) -> None:
        super().__init__()
        norm = norm_layer or (lambda c: nn.Identity())
        self.body = nn.Sequential(
            nn.Conv2d(dim, out_channels, 1, bias=norm_layer is None), norm(out_channels),
            nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=norm_layer is None),
            norm(out_channels),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


class ViTFeatureBackbone(nn.Module):
    """ViT + adapter + (FPN | single-scale neck): the detector's backbone.

    Declares its outputs (``output_shape``) and the square input it needs (``square_size``) so the
    detector builds its anchors and RoI pooling from them instead of guessing.

    Args:
        vit: the ViT (its ``out_indexes`` must be the 4 quarter ends for multi-scale).
        out_channels: FPN / neck width.
        multi_scale: 4-level pyramid + max-pooled 5th level (True) or the stride-p map only.
        norm_layer: normalisation after FPN / neck convs (BatchNorm in the paper; None = none).
        square_size: the fixed square input side.
    """

    def __init__(self, vit: ViT, out_channels: int = 256, multi_scale: bool = True,
                 norm_layer: Callable[..., nn.Module] | None = nn.BatchNorm2d,
                 square_size: int = 1024) -> None:
        super().__init__()
        self.vit = vit
        self.multi_scale = multi_scale
        self.out_channels = out_channels  # read by torchvision's MaskRCNN
        self.square_size = square_size
        dim, p = vit.embed_dim, vit.patch_size
        if multi_scale:
            if len(vit.out_indexes) != 4:
                raise ValueError("the multi-scale adapter needs 4 ViT outputs, got "
                                 f"{vit.out_indexes}")
            self.adapter = MultiScaleAdapter(dim)
            self.fpn = FeaturePyramidNetwork([dim] * 4, out_channels,
                                             extra_blocks=LastLevelMaxPool(),
                                             norm_layer=norm_layer)
            strides = (p // 4, p // 2, p, 2 * p, 4 * p)
            names = ("0", "1", "2", "3", "pool")
        else:
            self.neck = SingleScaleNeck(dim, out_channels, norm_layer)
            strides, names = (p,), ("0",)
        self._specs = OrderedDict((n, FeatureSpec(out_channels, s)) for n, s in zip(names, strides))

    def output_shape(self) -> OrderedDict[str, FeatureSpec]:
        """Feature names -> (channels, stride), in the order the detector receives them."""
        return self._specs

    @property
    def roi_feature_names(self) -> list[str]:
        """Levels RoIAlign pools from (the max-pooled level only feeds the RPN)."""
        return [n for n in self._specs if n != "pool"]

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        feats = self.vit(x)
        if not self.multi_scale:
            return OrderedDict(("0", self.neck(feats[-1])) for _ in [0])
        maps = self.adapter(feats)
        return self.fpn(OrderedDict((str(i), m) for i, m in enumerate(maps)))
