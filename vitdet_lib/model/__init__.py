"""The ViT backbone, its adapters and the upgraded Mask R-CNN."""
from .adapter import FeatureSpec, MultiScaleAdapter, ViTFeatureBackbone
from .detector import (
    FixedSquareTransform,
    build_detector,
    build_resnet_detector,
    build_vit_backbone,
)
from .pos import GridBias, rel_pos_bias, resize_abs_pos, resize_rel_table
from .vit import ViT, window_partition, window_unpartition
from .window_reference import window_partition_reference, window_unpartition_reference

__all__ = [
    "FeatureSpec", "FixedSquareTransform", "GridBias", "MultiScaleAdapter", "ViT",
    "ViTFeatureBackbone", "build_detector", "build_resnet_detector", "build_vit_backbone",
    "rel_pos_bias", "resize_abs_pos", "resize_rel_table", "window_partition",
    "window_partition_reference", "window_unpartition", "window_unpartition_reference",
]
