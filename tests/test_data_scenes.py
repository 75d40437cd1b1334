"""Procedural shape scenes: determinism, RLE encoding, occlusion-correct annotations."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from vitdet_lib.data.coco import CocoDetection, coco_split_paths
from vitdet_lib.data.scenes import SHAPE_CLASSES, Layer, composite, mask_to_rle, write_shape_scenes


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_deterministic_for_a_seed(tmp_path: Path) -> None:
    write_shape_scenes(tmp_path / "a", num_images=4, image_size=64, seed=3)
    write_shape_scenes(tmp_path / "b", num_images=4, image_size=64, seed=3)
    write_shape_scenes(tmp_path / "c", num_images=4, image_size=64, seed=4)
    assert _files(tmp_path / "a") == _files(tmp_path / "b")
    assert _files(tmp_path / "a") != _files(tmp_path / "c")


def test_scene_i_does_not_depend_on_num_images(tmp_path: Path) -> None:
    write_shape_scenes(tmp_path / "a", num_images=2, image_size=64, seed=0)
    write_shape_scenes(tmp_path / "b", num_images=5, image_size=64, seed=0)
    for name in ("000000.png", "000001.png"):
        assert (tmp_path / "a/images/train" / name).read_bytes() == (
            tmp_path / "b/images/train" / name
        ).read_bytes()


def test_rle_matches_pycocotools() -> None:
    rng = np.random.default_rng(0)
    for _ in range(100):
        shape = tuple(int(v) for v in rng.integers(1, 30, size=2))
        mask = rng.random(shape) < rng.random()
        ours = mask_to_rle(mask)
        reference = mask_utils.encode(np.asfortranarray(mask.astype(np.uint8)))
        assert ours["counts"] == reference["counts"].decode() and ours["size"] == list(shape)


def test_occlusion_gives_visible_masks() -> None:
    background = np.zeros((20, 20, 3), dtype=np.uint8)
    square = np.ones((10, 10), dtype=bool)
    bottom = Layer(square, np.full((10, 10, 3), 100, np.uint8), top=0, left=0, category_id=1)
    top = Layer(square, np.full((10, 10, 3), 200, np.uint8), top=5, left=5, category_id=2)
    hidden = Layer(
        np.ones((3, 3), bool), np.full((3, 3, 3), 50, np.uint8), top=7, left=7, category_id=3
    )
    image, objects = composite(background, [bottom, hidden, top], min_visible_pixels=1)
    assert [layer.category_id for _, layer in objects] == [1, 2]  # the hidden one is dropped
    visible_bottom, visible_top = objects[0][0], objects[1][0]
    assert visible_bottom.sum() == 100 - 25 and visible_top.sum() == 100
    assert not (visible_bottom & visible_top).any()
    assert (image[visible_top] == 200).all() and (image[visible_bottom] == 100).all()


def test_annotations_consistent_with_masks(tmp_path: Path) -> None:
    ann_file = write_shape_scenes(tmp_path, num_images=6, image_size=96, seed=1)
    data = json.loads(ann_file.read_text())
    assert [c["name"] for c in data["categories"]] == list(SHAPE_CLASSES)
    assert len(data["images"]) == 6 and len(data["annotations"]) >= 6
    by_image: dict[int, list[np.ndarray]] = {}
    for ann in data["annotations"]:
        mask = mask_utils.decode(ann["segmentation"]).astype(bool)
        assert mask.sum() == ann["area"] > 0
        ys, xs = np.nonzero(mask)
        assert ann["bbox"] == [xs.min(), ys.min(), xs.max() + 1 - xs.min(), ys.max() + 1 - ys.min()]
        by_image.setdefault(ann["image_id"], []).append(mask)
    for masks in by_image.values():  # visible parts never overlap
        assert (np.sum(masks, axis=0) <= 1).all()
    image_dir, ann_path = coco_split_paths(tmp_path, "train")
    assert ann_path == ann_file
    dataset = CocoDetection(image_dir, ann_path)
    dataset.check_images(decode=True)
    assert Image.open(image_dir / "000000.png").size == (96, 96)


@pytest.mark.parametrize("split", ["train", "val"])
def test_splits_differ(tmp_path: Path, split: str) -> None:
    path = write_shape_scenes(tmp_path, num_images=2, image_size=48, seed=0, split=split)
    assert path.name == f"instances_{split}.json"
    other = write_shape_scenes(
        tmp_path / "x", num_images=2, image_size=48, seed=0, split=split + "2"
    )
    assert (tmp_path / "images" / split / "000000.png").read_bytes() != (
        other.parent.parent / "images" / (split + "2") / "000000.png"
    ).read_bytes()
