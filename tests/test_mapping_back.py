"""Odd-sized images through the detector's fixed square input and back: the resized sizes, the
pixels, target boxes and masks on the way in, predicted boxes and mask pixels on the way out,
each against values computed here by hand, and ``boxes_to_original`` agreeing with the detector.
"""
import math

import pytest
import torch
import torch.nn.functional as F

from vitdet_lib.data import boxes_to_original, boxes_to_resized, resized_size
from vitdet_lib.model.detector import FixedSquareTransform

SIZE = 64
MEAN, STD = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]

# (original (H, W), resized (h, w) = round(side * 64 / longest side), a box in the resized input,
# the same box in the original image) -- worked out by hand:
#   37 x 91: scale 64/91, h = round(26.02) = 26; x * 91/64, y * 37/26
#   91 x 37: the transpose
#   33 x 50: scale 1.28 (enlarged), h = round(42.24) = 42; x * 50/64, y * 33/42
CASES = [
    ((37, 91), (26, 64), [6.4, 2.6, 57.6, 23.4], [9.1, 3.7, 81.9, 33.3]),
    ((91, 37), (64, 26), [2.6, 6.4, 23.4, 57.6], [3.7, 9.1, 33.3, 81.9]),
    ((33, 50), (42, 64), [12.8, 8.4, 51.2, 37.8], [10.0, 6.6, 40.0, 29.7]),
]
IDS = ["37x91", "91x37", "33x50"]


def _transform() -> FixedSquareTransform:
    return FixedSquareTransform(SIZE, MEAN, STD)


@pytest.mark.parametrize("original,resized,_box,_orig_box", CASES, ids=IDS)
def test_odd_sizes_are_resized_on_the_longest_side_and_padded_bottom_right(original, resized,
                                                                           _box, _orig_box):
    assert resized_size(original, SIZE) == resized
    image = torch.rand(3, *original)
    batch, _ = _transform().eval()([image])
    assert batch.image_sizes == [resized] and batch.tensors.shape == (1, 3, SIZE, SIZE)
    h, w = resized
    normalised = (image - torch.tensor(MEAN)[:, None, None]) / torch.tensor(STD)[:, None, None]
    expected = F.interpolate(normalised[None], size=(h, w), mode="bilinear", align_corners=False)
    torch.testing.assert_close(batch.tensors[0, :, :h, :w], expected[0])
    assert (batch.tensors[0, :, h:, :].abs().sum() == 0
            and batch.tensors[0, :, :, w:].abs().sum() == 0)


@pytest.mark.parametrize("original,resized,box,orig_box", CASES, ids=IDS)
def test_predicted_boxes_map_back_to_the_original_image(original, resized, box, orig_box):
    pred = {"boxes": torch.tensor([box]), "labels": torch.tensor([1]), "scores": torch.ones(1)}
    (out,) = _transform().eval().postprocess([pred], [resized], [original])
    torch.testing.assert_close(out["boxes"], torch.tensor([orig_box]))
    # the helper notebooks use for the same mapping agrees with the detector, and inverts
    torch.testing.assert_close(boxes_to_original(torch.tensor([box]), original, SIZE),
                               torch.tensor([orig_box]))
    torch.testing.assert_close(boxes_to_resized(torch.tensor([orig_box]), original, SIZE),
                               torch.tensor([box]))


def test_boxes_to_original_clips_to_the_image():
    # a box over the padding of a 37 x 91 image (resized 26 x 64) ends at the image border
    out = boxes_to_original(torch.tensor([[-3.0, 20.0, 70.0, 40.0]]), (37, 91), SIZE)
    torch.testing.assert_close(out, torch.tensor([[0.0, 20 * 37 / 26, 91.0, 37.0]]))


@pytest.mark.parametrize("original,resized,box,orig_box", CASES, ids=IDS)
def test_predicted_mask_pixels_land_in_the_original_box(original, resized, box, orig_box):
    """A RoI mask whose left half is on, pasted into the original image: on left of the box's
    centre line, off right of it and outside the box. Margins of 2 px: torchvision pastes into
    the box snapped to whole pixels, with a bilinear edge."""
    roi_mask = torch.zeros(1, 1, 28, 28)
    roi_mask[..., :14] = 1.0
    pred = {"boxes": torch.tensor([box]), "labels": torch.tensor([1]), "scores": torch.ones(1),
            "masks": roi_mask}
    (out,) = _transform().eval().postprocess([pred], [resized], [original])
    mask = out["masks"][0, 0]
    assert mask.shape == original
    x0, y0, x1, y1 = orig_box
    xc = (x0 + x1) / 2
    ys, xs = torch.meshgrid(torch.arange(original[0]) + 0.5, torch.arange(original[1]) + 0.5,
                            indexing="ij")  # pixel centres
    on = (ys > y0 + 2) & (ys < y1 - 2) & (xs > x0 + 2) & (xs < xc - 2)
    off = (xs > xc + 2) | (xs < x0 - 2) | (ys < y0 - 2) | (ys > y1 + 2)
    assert on.sum() > 50 and (mask[on] > 0.5).all()
    assert (mask[off] < 0.5).all()
    # the edge of the on-half sits at the original box's centre line, not the resized box's
    row = mask[round((y0 + y1) / 2)]
    last_on = int((row > 0.5).nonzero().max()) + 0.5
    assert abs(last_on - xc) <= 2


def test_targets_of_an_odd_sized_image_are_rescaled_with_it():
    """The train-mode branch for inputs that are not already square (LSJ outputs are): boxes
    by the per-axis ratios, masks by nearest neighbour, then back by ``postprocess``."""
    original, (h, w) = (37, 91), (26, 64)
    mask = torch.zeros(1, *original, dtype=torch.uint8)
    mask[0, 4:33, 9:82] = 1
    target = {"boxes": torch.tensor([[9.1, 3.7, 81.9, 33.3]]), "labels": torch.tensor([1]),
              "masks": mask}
    t = _transform().train()
    batch, (out,) = t([torch.rand(3, *original)], [target])
    assert batch.image_sizes == [(h, w)]
    torch.testing.assert_close(out["boxes"], torch.tensor([[6.4, 2.6, 57.6, 23.4]]))
    # nearest neighbour: output pixel (i, j) takes input pixel (floor(i * H / h), floor(j * W / w))
    expected = torch.tensor([[int(mask[0, math.floor(i * 37 / h), math.floor(j * 91 / w)])
                              for j in range(w)] for i in range(h)], dtype=torch.uint8)
    assert out["masks"].shape == (1, h, w) and torch.equal(out["masks"][0], expected)
    (back,) = t.eval().postprocess([{"boxes": out["boxes"]}], [(h, w)], [original])
    torch.testing.assert_close(back["boxes"], target["boxes"])
