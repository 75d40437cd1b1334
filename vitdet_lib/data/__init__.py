"""Datasets (COCO format, Fashion-MNIST, procedural scenes), transforms and loaders."""

from .coco import (
    CocoDatasetError,
    CocoDetection,
    coco_split_paths,
    pil_to_rgb_uint8,
    segmentation_to_mask,
)
from .fashion import (
    FASHION_MNIST_CLASSES,
    FashionMNISTNotFoundError,
    fashion_mnist_dir,
    load_fashion_mnist,
    write_fashion_scenes,
)
from .loader import ResumableBatchSampler, build_loader, collate, measure_throughput
from .scenes import SHAPE_CLASSES, mask_to_rle, write_shape_scenes
from .transforms import (
    FixedSizeCrop,
    boxes_to_original,
    boxes_to_resized,
    eval_transform,
    lsj_transform,
    masks_to_boxes_xyxy,
    resized_size,
)
from .validate import Problem, check_coco, validate_coco

__all__ = [
    "FASHION_MNIST_CLASSES",
    "SHAPE_CLASSES",
    "CocoDatasetError",
    "CocoDetection",
    "FashionMNISTNotFoundError",
    "FixedSizeCrop",
    "Problem",
    "ResumableBatchSampler",
    "boxes_to_original",
    "boxes_to_resized",
    "build_loader",
    "check_coco",
    "coco_split_paths",
    "collate",
    "eval_transform",
    "fashion_mnist_dir",
    "load_fashion_mnist",
    "lsj_transform",
    "mask_to_rle",
    "masks_to_boxes_xyxy",
    "measure_throughput",
    "pil_to_rgb_uint8",
    "resized_size",
    "segmentation_to_mask",
    "validate_coco",
    "write_fashion_scenes",
    "write_shape_scenes",
]
