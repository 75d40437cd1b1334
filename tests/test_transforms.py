"""LSJ and eval transforms, box mapping, and the resumable, sharded loader."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torchvision import tv_tensors

from vitdet_lib.data.coco import CocoDetection, coco_split_paths
from vitdet_lib.data.loader import ResumableBatchSampler, build_loader, collate, measure_throughput
from vitdet_lib.data.scenes import write_shape_scenes
from vitdet_lib.data.transforms import (
    FixedSizeCrop,
    boxes_to_original,
    boxes_to_resized,
    eval_transform,
    lsj_transform,
    masks_to_boxes_xyxy,
    resized_size,
)

S = 64


@pytest.fixture(scope="module")
def scenes(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("scenes")
    write_shape_scenes(root, num_images=12, image_size=80, seed=0)
    return coco_split_paths(root, "train")


def _sample(size: tuple[int, int], boxes: list[list[float]]) -> tuple[torch.Tensor, dict[str, Any]]:
    """A white uint8 image with rectangular instances (mask == box)."""
    height, width = size
    masks = torch.zeros((len(boxes), height, width), dtype=torch.uint8)
    for i, (x0, y0, x1, y1) in enumerate(boxes):
        masks[i, int(y0) : int(y1), int(x0) : int(x1)] = 1
    target = {
        "boxes": tv_tensors.BoundingBoxes(
            torch.tensor(boxes).reshape(-1, 4), format="XYXY", canvas_size=size
        ),
        "masks": tv_tensors.Mask(masks),
        "labels": torch.arange(1, len(boxes) + 1),
        "image_id": 1,
    }
    return tv_tensors.Image(torch.full((3, height, width), 255, dtype=torch.uint8)), target


def test_lsj_shapes_and_mask_box_consistency(scenes: tuple[Path, Path]) -> None:
    dataset = CocoDetection(*scenes, transform=lsj_transform(S))
    torch.manual_seed(0)
    seen = 0
    for _ in range(3):
        for index in range(len(dataset)):
            image, target = dataset[index]
            assert image.shape == (3, S, S) and image.dtype == torch.float32
            assert 0 <= float(image.min()) and float(image.max()) <= 1
            boxes, masks = target["boxes"], target["masks"]
            n = len(target["labels"])
            assert boxes.shape == (n, 4) and masks.shape == (n, S, S) and masks.dtype == torch.uint8
            assert (boxes >= 0).all() and (boxes <= S).all()
            assert (boxes[:, 2:] - boxes[:, :2] >= 1).all()
            assert (masks.flatten(1).sum(1) > 0).all()  # no empty instance survives
            assert torch.allclose(masks_to_boxes_xyxy(masks), boxes, atol=1.0)
            seen += n
    assert seen > 0


def test_lsj_drops_instances_cropped_away() -> None:
    transform = lsj_transform(S, scale_range=(2.0, 2.0), flip_prob=0.0)
    torch.manual_seed(0)
    counts = []
    for _ in range(20):
        _, target = transform(*_sample((S, S), [[0, 0, 10, 10], [S - 10, S - 10, S, S]]))
        assert len(target["boxes"]) == len(target["masks"]) == len(target["labels"])
        counts.append(len(target["labels"]))
    # At scale 2 a crop of S x S sees a quarter of the image: never both corners, often neither.
    assert max(counts) == 1 and min(counts) == 0


def test_lsj_handles_images_without_instances() -> None:
    image, target = lsj_transform(S)(*_sample((50, 70), []))
    assert image.shape == (3, S, S)
    assert target["boxes"].shape == (0, 4) and target["masks"].shape == (0, S, S)
    assert target["labels"].shape == (0,)


def test_lsj_pads_bottom_right_and_flips_masks_with_boxes() -> None:
    transform = lsj_transform(S, scale_range=(0.5, 0.5), flip_prob=1.0, pad_value=0.0)
    image, target = transform(*_sample((S, S), [[0, 0, 8, 16]]))
    half = S // 2
    assert (
        (image[:, :half, :half] == 1).all()
        and (image[:, half:, :] == 0).all()
        and (image[:, :, half:] == 0).all()
    )
    # The flip happens before scaling: the box at the left edge ends at the right of the content.
    assert target["boxes"].tolist() == [[half - 4, 0, half, 8]]
    assert torch.equal(masks_to_boxes_xyxy(target["masks"]), target["boxes"])


def test_lsj_scale_range_is_respected() -> None:
    """The content of a square S x S input scaled by s occupies min(s, 1) * S rows."""
    transform = lsj_transform(S, scale_range=(0.1, 2.0), pad_value=0.0)
    torch.manual_seed(1)
    extents = []
    for _ in range(300):
        image, _ = transform(*_sample((S, S), [[0, 0, S, S]]))
        extents.append(int((image[0, :, 0] > 0.5).sum()) / S)
    extents_t = torch.tensor(extents)
    assert float(extents_t.min()) >= 0.1 - 1.5 / S
    # P(s < 1) = 0.9 / 1.9 = 0.474 for s ~ U[0.1, 2.0]; 300 draws: std 0.029.
    assert 0.38 < float((extents_t < 1).float().mean()) < 0.57
    small = extents_t[extents_t < 1]
    assert abs(float(small.mean()) - 0.55) < 0.06  # U[0.1, 1) has mean 0.55


def test_fixed_size_crop_of_larger_image_keeps_boxes_consistent() -> None:
    crop = FixedSizeCrop(S)
    torch.manual_seed(0)
    for _ in range(10):
        image, target = _sample((S + 40, S + 30), [[10, 10, 60, 50], [S, S, S + 30, S + 40]])
        image, target = crop(image, target)
        assert image.shape == (3, S, S) and target["masks"].shape[-2:] == (S, S)
        assert target["boxes"].canvas_size == (S, S)
        for box, mask in zip(target["boxes"], target["masks"]):
            if mask.any():  # rectangles: the clipped box is the mask's box
                assert torch.equal(masks_to_boxes_xyxy(mask[None])[0], box)


def test_eval_transform_and_box_mapping() -> None:
    image, target = _sample((30, 50), [[5, 5, 20, 25]])
    out, out_target = eval_transform()(image, target)
    assert out.dtype == torch.float32 and out.shape == (3, 30, 50) and float(out.max()) == 1.0
    assert torch.equal(out_target["boxes"], target["boxes"])
    assert resized_size((30, 50), 100) == (60, 100)
    boxes = torch.tensor([[5.0, 5.0, 20.0, 25.0]])
    resized = boxes_to_resized(boxes, (30, 50), 100)
    assert torch.allclose(resized, boxes * 2)
    assert torch.allclose(boxes_to_original(resized, (30, 50), 100), boxes)
    assert boxes_to_original(torch.tensor([[0.0, 0.0, 100.0, 100.0]]), (30, 50), 100).tolist() == [
        [0, 0, 50, 30]
    ]


def test_masks_to_boxes_xyxy() -> None:
    masks = torch.zeros((3, 5, 6), dtype=torch.uint8)
    masks[0, 1:3, 2:5] = 1
    masks[2, 4, 5] = 1
    assert masks_to_boxes_xyxy(masks).tolist() == [[2, 1, 5, 3], [0, 0, 0, 0], [5, 4, 6, 5]]
    assert masks_to_boxes_xyxy(torch.zeros((0, 5, 6))).shape == (0, 4)


# ---- loader -------------------------------------------------------------------------------


class _Noisy(torch.utils.data.Dataset):
    """Returns (index, a random draw): the draw shows which RNG state a sample was made under."""

    def __len__(self) -> int:
        return 10

    def __getitem__(self, index: int) -> tuple[int, float]:
        return index, float(torch.rand(()))


def _run(loader: torch.utils.data.DataLoader) -> list[tuple[list[int], list[float]]]:
    return [(list(indices), list(draws)) for indices, draws in loader]


def test_collate_keeps_lists() -> None:
    images, targets = collate([(torch.zeros(3, 4, 5), {"a": 1}), (torch.zeros(3, 6, 2), {"a": 2})])
    assert [i.shape[1] for i in images] == [4, 6] and targets == [{"a": 1}, {"a": 2}]


def test_loader_deterministic_and_rng_neutral() -> None:
    first = _run(build_loader(_Noisy(), 3, seed=5))
    torch.manual_seed(123)
    before = torch.get_rng_state()
    second = _run(build_loader(_Noisy(), 3, seed=5))
    assert first == second
    assert torch.equal(torch.get_rng_state(), before)  # loading leaves the training RNG alone
    assert _run(build_loader(_Noisy(), 3, seed=6)) != first
    assert sorted(i for batch, _ in first for i in batch) == list(range(10))


def test_loader_resume_matches_uninterrupted_run() -> None:
    loader = build_loader(_Noisy(), 3, seed=0, drop_last=True)
    loader.batch_sampler.set_epoch(2)
    full = _run(loader)
    assert len(full) == 3
    resumed = build_loader(_Noisy(), 3, seed=0, drop_last=True, epoch=2, start_batch=1)
    assert len(resumed) == 2
    assert _run(resumed) == full[1:]
    # The resume applies once: the next pass over the same epoch is whole again.
    assert _run(resumed) == full
    loader.batch_sampler.set_epoch(3)
    assert _run(loader) != full


def test_sharding_partitions_each_epoch() -> None:
    shards = [ResumableBatchSampler(10, 2, seed=1, num_replicas=3, rank=r) for r in range(3)]
    indices = [[i for batch in s for i, _ in batch] for s in shards]
    assert all(len(x) == 4 for x in indices)  # ceil(10 / 3), padded by wrap-around
    assert set().union(*map(set, indices)) == set(range(10))
    # Same sample, same augmentation seed, whichever rank draws it.
    seeds = {i: seed for s in shards for batch in s for i, seed in batch}
    assert all(seeds[i] == seed for s in shards for batch in s for i, seed in batch)


def test_workers_do_not_change_samples(scenes: tuple[Path, Path]) -> None:
    dataset = CocoDetection(*scenes, transform=lsj_transform(S))
    serial = build_loader(dataset, 4, num_workers=0, seed=3)
    parallel = build_loader(dataset, 4, num_workers=2, seed=3)
    for (images_a, targets_a), (images_b, targets_b) in zip(serial, parallel):
        assert all(torch.equal(a, b) for a, b in zip(images_a, images_b))
        assert all(torch.equal(a["boxes"], b["boxes"]) for a, b in zip(targets_a, targets_b))
    assert measure_throughput(dataset, num_workers=0, batches=2, batch_size=2, warmup=1) > 0
