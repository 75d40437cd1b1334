"""Training augmentation (large-scale jitter) and evaluation transforms.

Transforms take and return ``(image, target)`` with torchvision's tv_tensors: the image a
``tv_tensors.Image`` (uint8 or float [3, H, W]), ``target["boxes"]`` ``tv_tensors.BoundingBoxes``
(XYXY) and ``target["masks"]`` ``tv_tensors.Mask`` [N, H, W]; ``CocoDetection`` wraps and
unwraps them.

LSJ as in the paper (and Ghiasi et al.'s copy-paste paper): resize so the image would fit an
S x S square, times a random scale in [0.1, 2.0]; crop a random S x S window if larger; pad
bottom-right to S x S. The detector then sees a fixed square input and must not resize again.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

# the default padding: the detector's default mean, so the padded area is zero after
# normalisation, the same value the detector pads with after normalising
from ..config import IMAGENET_MEAN


def _query_size(flat_inputs: list[Any]) -> tuple[int, int]:
    for inpt in flat_inputs:
        if isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask)):
            return tuple(inpt.shape[-2:])  # type: ignore[return-value]
        if isinstance(inpt, tv_tensors.BoundingBoxes):
            return tuple(inpt.canvas_size)  # type: ignore[return-value]
    raise TypeError("no tv_tensors.Image, Mask or BoundingBoxes among the inputs")


class FixedSizeCrop(v2.Transform):
    """Random ``size x size`` window of a larger image; a smaller one is padded bottom-right.

    Unlike ``v2.RandomCrop(pad_if_needed=True)``, which pads on all sides and then crops at a
    random offset, the image content always starts at the top-left corner; inference pads the
    same way, so train and test agree on where padding is.

    Args:
        size: output side S.
        pad_value: image padding per channel in [0, 1] units (scaled to 0..255 for uint8
            images); masks are padded with 0.
    """

    def __init__(self, size: int, pad_value: float | Sequence[float] = IMAGENET_MEAN) -> None:
        super().__init__()
        self.size = size
        self.pad_value = (
            [float(pad_value)] * 3
            if isinstance(pad_value, (int, float))
            else [float(v) for v in pad_value]
        )

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        height, width = _query_size(flat_inputs)
        crop_h, crop_w = min(height, self.size), min(width, self.size)
        top = int(torch.randint(0, height - crop_h + 1, ()))
        left = int(torch.randint(0, width - crop_w + 1, ()))
        return {"top": top, "left": left, "height": crop_h, "width": crop_w}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        if not isinstance(inpt, (tv_tensors.Image, tv_tensors.Mask, tv_tensors.BoundingBoxes)):
            return inpt
        out = F.crop(inpt, params["top"], params["left"], params["height"], params["width"])
        # Padding order of F.pad: left, top, right, bottom.
        padding = [0, 0, self.size - params["width"], self.size - params["height"]]
        if not any(padding):
            return out
        if isinstance(inpt, tv_tensors.Image):
            scale = 255.0 if inpt.dtype == torch.uint8 else 1.0
            return F.pad(out, padding, fill=[v * scale for v in self.pad_value])
        return F.pad(out, padding, fill=0)


def masks_to_boxes_xyxy(masks: torch.Tensor) -> torch.Tensor:
    """Tight boxes of binary masks [N, H, W] -> float32 [N, 4] XYXY.

    Pixel ``i`` spans ``[i, i + 1)``, so a mask covering columns 3..5 gets x1 = 3, x2 = 6
    (``torchvision.ops.masks_to_boxes`` would give 5). Empty masks get an all-zero box.
    """
    boxes = torch.zeros((masks.shape[0], 4), dtype=torch.float32)
    if masks.numel() == 0:
        return boxes
    rows, cols = masks.bool().any(dim=2), masks.bool().any(dim=1)  # [N, H], [N, W]
    non_empty = rows.any(dim=1)
    height, width = masks.shape[-2:]
    y_idx = torch.arange(height).expand_as(rows)
    x_idx = torch.arange(width).expand_as(cols)
    boxes[:, 0] = torch.where(cols, x_idx, width).amin(dim=1)
    boxes[:, 1] = torch.where(rows, y_idx, height).amin(dim=1)
    boxes[:, 2] = torch.where(cols, x_idx, -1).amax(dim=1) + 1
    boxes[:, 3] = torch.where(rows, y_idx, -1).amax(dim=1) + 1
    boxes[~non_empty] = 0
    return boxes


class BoxesFromMasks:
    """Replace the boxes by the tight boxes of the (cropped) masks.

    A crop that cuts an object leaves its clipped box larger than what remains visible (an L
    shape cut below its corner); detectron2's LSJ recipes recompute boxes from masks for the
    same reason. Instances whose mask became empty get a zero box, which
    ``SanitizeBoundingBoxes`` then drops.
    """

    def __call__(
        self, image: torch.Tensor, target: dict[str, Any]
    ) -> tuple[torch.Tensor, dict[str, Any]]:
        masks = target.get("masks")
        if masks is None:
            return image, target
        boxes = target["boxes"]
        target = dict(target)
        target["boxes"] = tv_tensors.wrap(masks_to_boxes_xyxy(masks).to(boxes.device), like=boxes)
        return image, target


def lsj_transform(
    image_size: int,
    *,
    scale_range: tuple[float, float] = (0.1, 2.0),
    flip_prob: float = 0.5,
    pad_value: float | Sequence[float] = IMAGENET_MEAN,
    recompute_boxes: bool = True,
    min_box_size: float = 1.0,
) -> v2.Compose:
    """Large-scale jitter for training: output image float32 [3, S, S] in [0, 1].

    Args:
        image_size: S.
        scale_range: jitter of the scale at which the image fits S x S.
        flip_prob: probability of a horizontal flip.
        pad_value: see ``FixedSizeCrop``.
        recompute_boxes: boxes become the tight boxes of the cropped masks (needs masks).
        min_box_size: instances whose box side falls below this (in pixels) are dropped,
            with their masks and labels.
    """
    steps: list[Any] = [
        # Flip first so that the bottom-right padding added later stays bottom-right.
        v2.RandomHorizontalFlip(flip_prob),
        v2.ScaleJitter(
            target_size=(image_size, image_size), scale_range=scale_range, antialias=True
        ),
        FixedSizeCrop(image_size, pad_value),
    ]
    if recompute_boxes:
        steps.append(BoxesFromMasks())
    steps += [
        v2.SanitizeBoundingBoxes(min_size=min_box_size),
        v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
    ]
    return v2.Compose(steps)


def eval_transform() -> v2.Compose:
    """Evaluation: the original-size image as float32 [3, H, W] in [0, 1]; the detector resizes
    and pads, and maps predictions back to this size."""
    return v2.Compose([v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True)])


def resized_size(original_size: tuple[int, int], image_size: int) -> tuple[int, int]:
    """``(h, w)`` after resizing ``(H, W)`` so the longer side is ``image_size`` (rounded)."""
    height, width = original_size
    scale = image_size / max(height, width)
    # Python's round(), as the detector's FixedSquareTransform.resize uses: the two must agree.
    return round(height * scale), round(width * scale)


def boxes_to_original(
    boxes: torch.Tensor, original_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """Map XYXY boxes [N, 4] from the resized, bottom-right-padded input back to the original
    image, clipped to it. Per-axis ratios undo the rounding of ``resized_size`` exactly."""
    height, width = original_size
    new_h, new_w = resized_size(original_size, image_size)
    ratios = torch.tensor(
        [width / new_w, height / new_h] * 2, dtype=boxes.dtype, device=boxes.device
    )
    out = boxes * ratios
    out[:, 0::2] = out[:, 0::2].clamp(0, width)
    out[:, 1::2] = out[:, 1::2].clamp(0, height)
    return out


def boxes_to_resized(
    boxes: torch.Tensor, original_size: tuple[int, int], image_size: int
) -> torch.Tensor:
    """Inverse of ``boxes_to_original``: original-image XYXY boxes [N, 4] -> resized input."""
    height, width = original_size
    new_h, new_w = resized_size(original_size, image_size)
    ratios = torch.tensor(
        [new_w / width, new_h / height] * 2, dtype=boxes.dtype, device=boxes.device
    )
    return boxes * ratios
