"""COCO-format dataset: mask decoding, crowd handling, label mapping, image modes, bad input."""

from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from pycocotools import mask as mask_utils

from vitdet_lib.data.coco import CocoDatasetError, CocoDetection

H, W = 12, 14


def _rect_mask(x0: int, y0: int, x1: int, y1: int) -> np.ndarray:
    mask = np.zeros((H, W), dtype=np.uint8)
    mask[y0:y1, x0:x1] = 1
    return mask


def _uncompressed_rle(mask: np.ndarray) -> dict[str, Any]:
    flat = mask.ravel(order="F")
    counts, current, run = [], 0, 0
    for value in flat:
        if value != current:
            counts.append(run)
            current, run = value, 0
        run += 1
    counts.append(run)
    return {"size": [H, W], "counts": counts}


def _dataset_dict() -> dict[str, Any]:
    """Two images; category ids 3 and 90 (non-contiguous); a polygon, a compressed RLE, an
    uncompressed RLE and a crowd region."""
    compressed = mask_utils.encode(np.asfortranarray(_rect_mask(1, 1, 5, 4)))
    compressed["counts"] = compressed["counts"].decode()
    return {
        "images": [
            {"id": 10, "file_name": "a.png", "width": W, "height": H},
            {"id": 11, "file_name": "b.png", "width": W, "height": H},
        ],
        "categories": [{"id": 90, "name": "ninety"}, {"id": 3, "name": "three"}],
        "annotations": [
            {
                "id": 1,
                "image_id": 10,
                "category_id": 3,
                "bbox": [2, 3, 8, 5],
                "area": 40,
                "iscrowd": 0,
                "segmentation": [[2, 3, 10, 3, 10, 8, 2, 8]],
            },
            {
                "id": 2,
                "image_id": 10,
                "category_id": 90,
                "bbox": [1, 1, 4, 3],
                "area": 12,
                "iscrowd": 0,
                "segmentation": compressed,
            },
            {
                "id": 3,
                "image_id": 10,
                "category_id": 3,
                "bbox": [8, 8, 5, 3],
                "area": 15,
                "iscrowd": 1,
                "segmentation": _uncompressed_rle(_rect_mask(8, 8, 13, 11)),
            },
            {
                "id": 4,
                "image_id": 11,
                "category_id": 90,
                "bbox": [0, 6, 3, 6],
                "area": 18,
                "iscrowd": 0,
                "segmentation": _uncompressed_rle(_rect_mask(0, 6, 3, 12)),
            },
        ],
    }


def _write(root: Path, data: dict[str, Any], images: bool = True) -> tuple[Path, Path]:
    if images:
        for image in data["images"]:
            Image.new("RGB", (image["width"], image["height"]), (200, 100, 50)).save(
                root / image["file_name"]
            )
    ann = root / "instances.json"
    ann.write_text(json.dumps(data))
    return root, ann


def test_masks_decode_to_expected_pixels(tmp_path: Path) -> None:
    dataset = CocoDetection(*_write(tmp_path, _dataset_dict()), mode="eval")
    _, target = dataset[0]
    masks = target["masks"].numpy()
    assert masks.dtype == np.uint8 and masks.shape == (3, H, W)
    # pycocotools rasterises polygon (2,3)-(10,8) to pixels x 2..9, y 3..7.
    np.testing.assert_array_equal(masks[0], _rect_mask(2, 3, 10, 8))
    np.testing.assert_array_equal(masks[1], _rect_mask(1, 1, 5, 4))  # compressed RLE
    np.testing.assert_array_equal(masks[2], _rect_mask(8, 8, 13, 11))  # uncompressed RLE
    _, target = dataset[1]
    np.testing.assert_array_equal(target["masks"][0].numpy(), _rect_mask(0, 6, 3, 12))
    assert target["boxes"].tolist() == [[0.0, 6.0, 3.0, 12.0]]  # xywh -> xyxy


def test_crowd_excluded_from_training_targets(tmp_path: Path) -> None:
    root, ann = _write(tmp_path, _dataset_dict())
    _, train_target = CocoDetection(root, ann, mode="train")[0]
    _, eval_target = CocoDetection(root, ann, mode="eval")[0]
    assert (
        len(train_target["boxes"]) == len(train_target["masks"]) == len(train_target["labels"]) == 2
    )
    assert "iscrowd" not in train_target
    assert eval_target["iscrowd"].tolist() == [0, 0, 1]


def test_label_mapping_and_sample_types(tmp_path: Path) -> None:
    dataset = CocoDetection(*_write(tmp_path, _dataset_dict()))
    assert dataset.cat_id_to_label == {3: 1, 90: 2}
    assert dataset.label_to_cat_id == {1: 3, 2: 90}
    assert dataset.class_names == ("__background__", "three", "ninety")
    assert dataset.num_categories == 2
    image, target = dataset[0]
    assert image.dtype == torch.float32 and image.shape == (3, H, W)
    assert torch.allclose(image[:, 0, 0], torch.tensor([200, 100, 50]) / 255)
    assert target["labels"].tolist() == [1, 2] and target["labels"].dtype == torch.int64
    assert target["boxes"].dtype == torch.float32 and target["image_id"] == 10
    assert type(target["boxes"]) is torch.Tensor


@pytest.mark.parametrize("mode", ["L", "RGB", "RGBA", "P", "I;16"])
def test_image_modes_become_rgb_float(tmp_path: Path, mode: str) -> None:
    data = _dataset_dict()
    root, ann = _write(tmp_path, data, images=False)
    grey = np.tile(np.linspace(0, 1, W, dtype=np.float32), (H, 1))  # a horizontal ramp
    if mode == "I;16":
        image = Image.fromarray((grey * 65535).round().astype(np.uint16))
        assert image.mode == "I;16"
    else:
        image = Image.fromarray((grey * 255).round().astype(np.uint8)).convert(mode)
    for info in data["images"]:
        image.save(root / info["file_name"])
    tensor, _ = CocoDetection(root, ann)[0]
    assert tensor.shape == (3, H, W) and tensor.dtype == torch.float32
    assert 0.0 <= float(tensor.min()) and float(tensor.max()) <= 1.0
    np.testing.assert_allclose(tensor[0].numpy(), grey, atol=1.5 / 255)


def _expect_error(tmp_path: Path, data: dict[str, Any], match: str, images: bool = True) -> None:
    root, ann = _write(tmp_path, data, images)
    with pytest.raises(CocoDatasetError, match=match):
        CocoDetection(root, ann)


def test_error_missing_required_key(tmp_path: Path) -> None:
    data = _dataset_dict()
    del data["categories"]
    _expect_error(tmp_path, data, r"instances\.json.*missing required key.*categories")
    data = _dataset_dict()
    del data["annotations"][1]["bbox"]
    _expect_error(tmp_path, data, r"instances\.json: annotations\[1\].*'bbox'")


def test_error_non_positive_box(tmp_path: Path) -> None:
    data = _dataset_dict()
    data["annotations"][2]["bbox"] = [8, 8, 0, 3]
    _expect_error(
        tmp_path, data, r"instances\.json: annotation id 3: non-positive box width/height"
    )
    data["annotations"][2]["bbox"] = [8, 8, 4, -1]
    _expect_error(tmp_path, data, r"annotation id 3: non-positive")


def test_invalid_boxes_can_be_dropped(tmp_path: Path) -> None:
    data = _dataset_dict()
    data["annotations"][0]["bbox"] = [2, 3, 0, 5]
    dataset = CocoDetection(*_write(tmp_path, data), invalid_boxes="drop")
    assert dataset.dropped_annotation_ids == [1]
    assert dataset[0][1]["labels"].tolist() == [2]


def test_error_unknown_category(tmp_path: Path) -> None:
    data = _dataset_dict()
    data["annotations"][3]["category_id"] = 7
    _expect_error(tmp_path, data, r"instances\.json: annotation id 4: unknown category id 7")


def test_error_empty_dataset(tmp_path: Path) -> None:
    data = _dataset_dict()
    data["images"], data["annotations"] = [], []
    _expect_error(tmp_path, data, r"instances\.json: empty dataset")


def test_error_bad_json_and_missing_file(tmp_path: Path) -> None:
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(CocoDatasetError, match=r"broken\.json: not valid JSON"):
        CocoDetection(tmp_path, tmp_path / "broken.json")
    with pytest.raises(CocoDatasetError, match=r"nowhere\.json: annotation file not found"):
        CocoDetection(tmp_path, tmp_path / "nowhere.json")


def test_error_bad_segmentation(tmp_path: Path) -> None:
    data = _dataset_dict()
    data["annotations"][1]["segmentation"]["size"] = [H + 1, W]
    _expect_error(tmp_path, data, r"annotation id 2: RLE size")
    data = _dataset_dict()
    data["annotations"][2]["segmentation"]["counts"][-1] += 1
    _expect_error(tmp_path, data, r"annotation id 3: uncompressed RLE counts")


def test_error_missing_image_file_is_lazy(tmp_path: Path) -> None:
    root, ann = _write(tmp_path, _dataset_dict())
    (root / "b.png").unlink()
    dataset = CocoDetection(root, ann)  # annotations are fine: construction succeeds
    dataset[0]
    with pytest.raises(CocoDatasetError, match=r"b\.png: image file missing \(image id 11"):
        dataset[1]
    with pytest.raises(
        CocoDatasetError, match=r"1 of 2 images failed:\n.*b\.png: image file missing"
    ):
        dataset.check_images()


def test_error_unreadable_image(tmp_path: Path) -> None:
    root, ann = _write(tmp_path, _dataset_dict())
    (root / "a.png").write_bytes(b"this is not a png")
    dataset = CocoDetection(root, ann)
    with pytest.raises(CocoDatasetError, match=r"a\.png: unreadable image \(image id 10\)"):
        dataset[0]
    with pytest.raises(CocoDatasetError, match=r"a\.png: unreadable image"):
        dataset.check_images(decode=True)


def test_error_image_size_mismatch(tmp_path: Path) -> None:
    root, ann = _write(tmp_path, _dataset_dict())
    Image.new("RGB", (W + 2, H)).save(root / "b.png")
    dataset = CocoDetection(root, ann)
    with pytest.raises(
        CocoDatasetError, match=r"b\.png: image is 16x12 but .*instances\.json says 14x12"
    ):
        dataset[1]
    with pytest.raises(CocoDatasetError, match=r"b\.png: image is 16x12"):
        dataset.check_images()


def test_json_is_not_modified_on_disk(tmp_path: Path) -> None:
    data = _dataset_dict()
    root, ann = _write(tmp_path, copy.deepcopy(data))
    CocoDetection(root, ann, invalid_boxes="drop")
    assert json.loads(ann.read_text()) == data
