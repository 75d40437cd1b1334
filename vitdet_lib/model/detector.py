"""The paper's upgraded Mask R-CNN, assembled from torchvision parts around a ViT backbone.

Upgrades over the original Mask R-CNN (docs/paper.md, "Upgraded Mask R-CNN"): BN after the FPN
convs, a 2-conv RPN head, a 4conv+1fc box head with BN, BN in the mask head, SyncBN when
distributed (the engine converts BatchNorm to SyncBatchNorm), and a fixed square input at train
and test time.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.detection import MaskRCNN
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.faster_rcnn import FastRCNNConvFCHead, FastRCNNPredictor
from torchvision.models.detection.image_list import ImageList
from torchvision.models.detection.mask_rcnn import MaskRCNNHeads, MaskRCNNPredictor
from torchvision.models.detection.rpn import RPNHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import MultiScaleRoIAlign

from ..config import DetectorConfig, ModelConfig
from .adapter import ViTFeatureBackbone
from .vit import ViT


class FixedSquareTransform(GeneralizedRCNNTransform):
    """Normalise, scale the longest side to ``size`` (a no-op for LSJ outputs, which already are
    ``size x size``), and pad bottom-right to a fixed ``size x size`` batch.

    torchvision's default transform resizes every image again (800/1333) and pads to a multiple
    of 32; the paper pads train and test inputs to the same fixed square. Predictions are mapped
    back to each image's original size by the inherited ``postprocess``.
    """

    def __init__(self, size: int, image_mean: list[float], image_std: list[float]) -> None:
        super().__init__(min_size=size, max_size=size, image_mean=image_mean, image_std=image_std,
                         size_divisible=1, fixed_size=(size, size))
        self.size = size

    def resize(self, image: torch.Tensor, target: dict[str, Any] | None = None
               ) -> tuple[torch.Tensor, dict[str, Any] | None]:
        h, w = image.shape[-2:]
        scale = self.size / max(h, w)
        if scale == 1.0:
            return image, target
        nh, nw = round(h * scale), round(w * scale)
        image = F.interpolate(image[None], size=(nh, nw), mode="bilinear", align_corners=False)[0]
        if target is not None:
            target = dict(target)
            if "boxes" in target:
                ratio = torch.tensor([nw / w, nh / h, nw / w, nh / h], device=image.device)
                target["boxes"] = target["boxes"] * ratio
            if "masks" in target:
                m = target["masks"]
                target["masks"] = F.interpolate(m[:, None].float(), size=(nh, nw))[:, 0].byte()
        return image, target

    def batch_images(self, images: list[torch.Tensor], size_divisible: int = 32) -> torch.Tensor:
        batch = images[0].new_zeros(len(images), images[0].shape[0], self.size, self.size)
        for img, slot in zip(images, batch):
            slot[:, : img.shape[1], : img.shape[2]].copy_(img)
        return batch


def _norm(kind: str) -> Callable[..., nn.Module] | None:
    if kind in ("bn", "syncbn"):  # SyncBN is swapped in by the engine when distributed
        return nn.BatchNorm2d
    if kind == "none":
        return None
    raise ValueError(f"detector.norm must be 'bn', 'syncbn' or 'none', got {kind!r}")


def build_vit_backbone(cfg: ModelConfig) -> ViTFeatureBackbone:
    """The ViT + adapter + FPN (or single-scale neck) described by ``cfg``."""
    det = cfg.detector
    out_indexes = None if det.multi_scale else (cfg.backbone.depth - 1,)
    vit = ViT(cfg.backbone, img_size=det.image_size, out_indexes=out_indexes)
    return ViTFeatureBackbone(vit, det.fpn_channels, det.multi_scale, _norm(det.norm),
                              det.image_size)


def build_detector(cfg: ModelConfig) -> MaskRCNN:
    """The paper's Mask R-CNN with a ViT backbone, from one config object."""
    backbone = build_vit_backbone(cfg)
    return assemble_mask_rcnn(backbone, backbone.roi_feature_names, cfg.detector)


def assemble_mask_rcnn(backbone: nn.Module, roi_names: list[str], det: DetectorConfig) -> MaskRCNN:
    """Upgraded RPN / box / mask heads and the fixed square transform around any backbone whose
    forward returns an ordered dict of ``backbone.out_channels``-wide maps."""
    c = backbone.out_channels
    norm = _norm(det.norm)
    num_levels = len(backbone.output_shape()) if hasattr(backbone, "output_shape") else 5
    if num_levels == 1:  # single scale: every anchor size on the one map
        sizes: tuple[tuple[int, ...], ...] = (tuple(det.anchor_sizes),)
    else:
        if len(det.anchor_sizes) != num_levels:
            raise ValueError(f"{num_levels} feature levels need {num_levels} anchor sizes, "
                             f"got {det.anchor_sizes}")
        sizes = tuple((s,) for s in det.anchor_sizes)
    anchors = AnchorGenerator(sizes, ((0.5, 1.0, 2.0),) * len(sizes))
    rpn_head = RPNHead(c, anchors.num_anchors_per_location()[0], conv_depth=2)
    box_head = FastRCNNConvFCHead((c, 7, 7), [c] * 4, [1024], norm_layer=norm)
    mask_head = MaskRCNNHeads(c, [c] * 4, 1, norm_layer=norm)
    model = MaskRCNN(
        backbone,
        num_classes=None,
        rpn_anchor_generator=anchors,
        rpn_head=rpn_head,
        rpn_pre_nms_top_n_train=det.rpn_pre_nms_top_n_train,
        rpn_post_nms_top_n_train=det.rpn_post_nms_top_n_train,
        rpn_pre_nms_top_n_test=det.rpn_pre_nms_top_n_test,
        rpn_post_nms_top_n_test=det.rpn_post_nms_top_n_test,
        box_roi_pool=MultiScaleRoIAlign(roi_names, 7, 2),
        box_head=box_head,
        box_predictor=FastRCNNPredictor(1024, det.num_classes + 1),
        box_batch_size_per_image=det.box_batch_size_per_image,
        box_detections_per_img=det.detections_per_img,
        box_score_thresh=det.box_score_thresh,
        mask_roi_pool=MultiScaleRoIAlign(roi_names, 14, 2),
        mask_head=mask_head,
        mask_predictor=MaskRCNNPredictor(c, c, det.num_classes + 1),
    )
    model.transform = FixedSquareTransform(det.image_size, list(det.pixel_mean),
                                           list(det.pixel_std))
    return model


def build_resnet_detector(det: DetectorConfig, depth: int = 101) -> MaskRCNN:
    """A ResNet-{50,101} FPN Mask R-CNN with the same upgraded heads and fixed square input: the
    paper's CNN reference point in Table 5 (randomly initialised; BN everywhere, as from
    scratch)."""
    from torchvision.models.detection.backbone_utils import resnet_fpn_backbone

    backbone = resnet_fpn_backbone(backbone_name=f"resnet{depth}", weights=None,
                                   norm_layer=nn.BatchNorm2d, trainable_layers=5)
    return assemble_mask_rcnn(backbone, ["0", "1", "2", "3"], det)


def images_to_batch(model: MaskRCNN, images: list[torch.Tensor]) -> ImageList:
    """The padded, normalised batch the backbone sees (for complexity tools and notebooks)."""
    image_list, _ = model.transform(images)
    return image_list
