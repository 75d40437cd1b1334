"""Fashion-MNIST reader and scene writer (skipped where the Debian files are absent)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from vitdet_lib.data.coco import CocoDetection, coco_split_paths
from vitdet_lib.data.fashion import (
    FASHION_MNIST_CLASSES,
    FashionMNISTNotFoundError,
    fashion_mnist_dir,
    load_fashion_mnist,
    write_fashion_scenes,
)

needs_files = pytest.mark.skipif(
    not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason=f"Fashion-MNIST not found in {fashion_mnist_dir()}: "
    "`sudo apt-get install dataset-fashion-mnist` or set VITDET_FASHION_MNIST_DIR",
)


def test_missing_files_error_says_how_to_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = (
        r"Install with `sudo apt-get install dataset-fashion-mnist` or pass a directory / "
        r"set env var `VITDET_FASHION_MNIST_DIR`"
    )
    with pytest.raises(FashionMNISTNotFoundError, match=expected):
        load_fashion_mnist("test", tmp_path)
    monkeypatch.setenv("VITDET_FASHION_MNIST_DIR", str(tmp_path / "elsewhere"))
    with pytest.raises(FashionMNISTNotFoundError, match=r"elsewhere/t10k-images-idx3-ubyte\.gz"):
        load_fashion_mnist("test")
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val")  # type: ignore[arg-type]


@needs_files
def test_load_splits() -> None:
    images, labels = load_fashion_mnist("test")
    assert images.shape == (10_000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10_000,) and labels.dtype == np.int64
    assert np.bincount(labels).tolist() == [1000] * 10
    assert not images.flags.writeable and not labels.flags.writeable
    train_images, train_labels = load_fashion_mnist("train")
    assert train_images.shape == (60_000, 28, 28) and len(train_labels) == 60_000
    assert len(FASHION_MNIST_CLASSES) == 10


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file():
        pytest.skip("Fashion-MNIST not installed")
    root = tmp_path_factory.mktemp("fashion")
    write_fashion_scenes(root, {"train": 24, "val": 12}, image_size=256, seed=7)
    return root


@needs_files
def test_deterministic_for_a_seed(scenes: Path, tmp_path: Path) -> None:
    again = write_fashion_scenes(
        tmp_path / "again", {"train": 24, "val": 12}, image_size=256, seed=7
    )
    for split, path in again.items():
        assert path.read_bytes() == (scenes / "annotations" / path.name).read_bytes()
        for image in sorted((tmp_path / "again/images" / split).iterdir()):
            assert image.read_bytes() == (scenes / "images" / split / image.name).read_bytes()
    other = write_fashion_scenes(tmp_path / "other", {"train": 2}, image_size=256, seed=8)
    first = (scenes / "images/train/000000.png").read_bytes()
    assert (other["train"].parent.parent / "images/train/000000.png").read_bytes() != first


@needs_files
def test_splits_use_disjoint_test_items(scenes: Path) -> None:
    items = {}
    for split in ("train", "val"):
        data = json.loads(coco_split_paths(scenes, split)[1].read_text())
        items[split] = {a["fashion_mnist_test_index"] for a in data["annotations"]}
        assert items[split] and all(0 <= i < 10_000 for i in items[split])
    assert not items["train"] & items["val"]


@needs_files
def test_datasheet_matches_json(scenes: Path) -> None:
    sheet = json.loads((scenes / "datasheet.json").read_text())
    assert sheet["seed"] == 7 and "Fashion-MNIST" in sheet["source"]["dataset"]
    markdown = (scenes / "datasheet.md").read_text()
    for split in ("train", "val"):
        data = json.loads(coco_split_paths(scenes, split)[1].read_text())
        s = sheet["splits"][split]
        anns = data["annotations"]
        assert s["num_images"] == len(data["images"]) and s["num_instances"] == len(anns)
        names = {c["id"]: c["name"] for c in data["categories"]}
        assert list(names.values()) == list(FASHION_MNIST_CLASSES)
        for name, count in s["instances_per_class"].items():
            assert count == sum(names[a["category_id"]] == name for a in anns)
        per_image = [sum(a["image_id"] == im["id"] for a in anns) for im in data["images"]]
        assert sum(int(k) * v for k, v in s["instances_per_image"]["histogram"].items()) == len(
            anns
        )
        assert s["instances_per_image"]["max"] == max(per_image)
        small = sum(a["area"] < 32**2 for a in anns)
        large = sum(a["area"] >= 96**2 for a in anns)
        assert (s["area_ranges"]["small"], s["area_ranges"]["large"]) == (small, large)
        assert sum(s["area_ranges"].values()) == len(anns)
        assert f"{s['num_images']} images, {s['num_instances']} instances" in markdown


@needs_files
def test_scenes_are_valid_coco_with_all_scales(scenes: Path) -> None:
    sheet = json.loads((scenes / "datasheet.json").read_text())
    assert all(
        n > 0 for n in sheet["splits"]["train"]["area_ranges"].values()
    )  # small, medium, large
    dataset = CocoDetection(*coco_split_paths(scenes, "val"), mode="eval")
    dataset.check_images(decode=True)
    image, target = dataset[0]
    assert image.shape == (3, 256, 256) and 2 <= len(target["labels"]) <= 8
    # Background is textured, not flat: no single value covers most of the non-object pixels.
    background = image[:, target["masks"].sum(0) == 0]
    assert float(background.std()) > 0.05
    data = json.loads(coco_split_paths(scenes, "val")[1].read_text())
    masks = [
        mask_utils.decode(a["segmentation"]) for a in data["annotations"] if a["image_id"] == 1
    ]
    assert (np.sum(masks, axis=0) <= 1).all()  # visible parts after occlusion do not overlap
