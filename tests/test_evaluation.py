"""COCO evaluation: result conversion, perfect and degraded predictions, crowd, empty results."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
from pycocotools import mask as mask_utils

from vitdet_lib.data.coco import CocoDetection, coco_split_paths
from vitdet_lib.data.scenes import write_shape_scenes
from vitdet_lib.evaluation import (
    METRIC_NAMES,
    coco_evaluate,
    evaluate_model,
    predictions_to_coco,
    save_coco_results,
)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory: pytest.TempPathFactory) -> CocoDetection:
    root = tmp_path_factory.mktemp("scenes")
    write_shape_scenes(root, num_images=6, image_size=96, seed=2, split="val")
    return CocoDetection(*coco_split_paths(root, "val"), mode="eval")


def _perfect(target: dict[str, Any], shift: float = 0.0) -> dict[str, torch.Tensor]:
    """Ground truth as a detector output (boxes shifted right by ``shift`` pixels)."""
    keep = target["iscrowd"] == 0
    boxes = target["boxes"][keep].clone()
    boxes[:, 0::2] += shift
    masks = target["masks"][keep][:, None].float()
    return {
        "boxes": boxes,
        "labels": target["labels"][keep],
        "scores": torch.ones(len(boxes)),
        "masks": masks,
    }


def _results(dataset: CocoDetection, shift: float = 0.0) -> list[dict[str, Any]]:
    targets = [dataset[i][1] for i in range(len(dataset))]
    outputs = [_perfect(t, shift) for t in targets]
    return predictions_to_coco(outputs, [t["image_id"] for t in targets], dataset.label_to_cat_id)


def test_result_format(dataset: CocoDetection) -> None:
    _, target = dataset[0]
    results = predictions_to_coco([_perfect(target)], [target["image_id"]], dataset.label_to_cat_id)
    assert len(results) == len(target["boxes"]) > 0
    first = results[0]
    assert set(first) == {"image_id", "category_id", "bbox", "score", "segmentation"}
    x0, y0, x1, y1 = target["boxes"][0].tolist()
    assert first["bbox"] == pytest.approx([x0, y0, x1 - x0, y1 - y0])
    assert first["category_id"] == dataset.label_to_cat_id[int(target["labels"][0])]
    assert isinstance(first["segmentation"]["counts"], str)
    decoded = mask_utils.decode(
        {**first["segmentation"], "counts": first["segmentation"]["counts"].encode()}
    )
    assert (torch.from_numpy(decoded) == target["masks"][0]).all()
    json.dumps(results)  # serialisable as is


def test_perfect_predictions_give_ap_100(dataset: CocoDetection) -> None:
    metrics = coco_evaluate(dataset.coco, _results(dataset))
    assert set(metrics) == {f"{t}/{m}" for t in ("bbox", "segm") for m in METRIC_NAMES}
    for key, value in metrics.items():
        assert value == pytest.approx(100.0) or math.isnan(value), key  # NaN: no GT in that range
    assert metrics["bbox/AP"] == pytest.approx(100.0) and metrics["segm/AP"] == pytest.approx(100.0)


def test_shifted_boxes_give_lower_ap(dataset: CocoDetection) -> None:
    metrics = coco_evaluate(dataset.coco, _results(dataset, shift=6.0), iou_types=("bbox",))
    assert set(metrics) == {f"bbox/{m}" for m in METRIC_NAMES}
    assert metrics["bbox/AP"] < 90.0
    assert metrics["bbox/AP50"] >= metrics["bbox/AP75"]


def test_empty_results_give_zero(dataset: CocoDetection, tmp_path: Path) -> None:
    ann_file = coco_split_paths(Path(dataset.ann_file).parent.parent, "val")[1]
    metrics = coco_evaluate(ann_file, [])
    assert metrics["bbox/AP"] == 0.0 and metrics["segm/APl"] == 0.0


def test_crowd_matches_are_ignored(tmp_path: Path) -> None:
    root = tmp_path / "scenes"
    ann_file = write_shape_scenes(root, num_images=3, image_size=64, seed=5)
    data = json.loads(ann_file.read_text())
    category = data["annotations"][0]["category_id"]  # one with real instances, so it is scored
    crowd = {
        "id": 10_000,
        "image_id": 1,
        "category_id": category,
        "bbox": [0, 0, 20, 20],
        "area": 400,
        "iscrowd": 1,
        "segmentation": {"size": [64, 64], "counts": [0] + [20, 44] * 20 + [64 * 44]},
    }
    data["annotations"].append(crowd)
    ann_file.write_text(json.dumps(data))
    dataset = CocoDetection(root / "images/train", ann_file, mode="eval")
    assert dataset[0][1]["iscrowd"].tolist()[-1] == 1
    results = _results(dataset)  # perfect on the non-crowd instances
    # A confident detection on the crowd region: neither a true nor a false positive.
    on_crowd = predictions_to_coco(
        [
            {
                "boxes": torch.tensor([[0.0, 0.0, 20.0, 20.0]]),
                "labels": torch.tensor([dataset.cat_id_to_label[category]]),
                "scores": torch.tensor([2.0]),
                "masks": dataset[0][1]["masks"][-1:, None].float(),
            }
        ],
        [1],
        dataset.label_to_cat_id,
    )
    metrics = coco_evaluate(ann_file, results + on_crowd)
    assert metrics["bbox/AP"] == pytest.approx(100.0) and metrics["segm/AP"] == pytest.approx(100.0)
    # Without the crowd region the same detection is a false positive.
    data["annotations"].pop()
    ann_file.write_text(json.dumps(data))
    metrics = coco_evaluate(ann_file, results + on_crowd)
    assert metrics["bbox/AP"] < 99.0 and metrics["segm/AP"] < 99.0


class _Oracle(torch.nn.Module):
    """Returns each image's ground truth, looked up by the image tensor itself."""

    def __init__(self, dataset: CocoDetection) -> None:
        super().__init__()
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.layer = torch.nn.Linear(1, 1)

    def forward(self, images: list[torch.Tensor]) -> list[dict[str, torch.Tensor]]:
        assert not self.training and not torch.is_grad_enabled()
        return [
            _perfect(next(t for im, t in self.samples if torch.equal(im, image)))
            for image in images
        ]


def test_evaluate_model_end_to_end(dataset: CocoDetection, tmp_path: Path) -> None:
    model = _Oracle(dataset).train()
    metrics = evaluate_model(model, dataset, "cpu", batch_size=2, output_dir=tmp_path / "eval")
    assert model.training  # mode restored
    assert metrics["bbox/AP"] == pytest.approx(100.0) and metrics["segm/AP"] == pytest.approx(100.0)
    assert metrics["num_images"] == len(dataset)
    saved = json.loads((tmp_path / "eval/metrics.json").read_text())
    assert saved["bbox/AP"] == pytest.approx(100.0)
    assert len(json.loads((tmp_path / "eval/coco_results.json").read_text())) == len(
        dataset.coco.anns
    )
    assert not list((tmp_path / "eval").glob(".*tmp*"))  # atomic writes leave no temporaries
    # A subset is evaluated on its own images only.
    partial = evaluate_model(model, dataset, "cpu", max_images=2)
    assert partial["num_images"] == 2 and partial["bbox/AP"] == pytest.approx(100.0)


def test_save_coco_results_atomic(tmp_path: Path) -> None:
    path = save_coco_results(tmp_path / "sub/results.json", [{"image_id": 1}])
    assert json.loads(path.read_text()) == [{"image_id": 1}]
    assert [p.name for p in path.parent.iterdir()] == ["results.json"]


def test_malformed_inputs_are_refused(dataset: CocoDetection) -> None:
    results = _results(dataset)
    with pytest.raises(ValueError, match="2 outputs but 1 image ids"):
        predictions_to_coco([{}, {}], [1], dataset.label_to_cat_id)
    with pytest.raises(ValueError, match="iou_type must be 'bbox' or 'segm'"):
        coco_evaluate(dataset.coco, results, iou_types=("keypoints",))
    boxes_only = [{k: v for k, v in r.items() if k != "segmentation"} for r in results]
    with pytest.raises(ValueError, match="segm evaluation needs 'segmentation'"):
        coco_evaluate(dataset.coco, boxes_only, iou_types=("segm",))
    # without masks a model is scored on boxes alone (no segm keys), not refused
    assert set(coco_evaluate(dataset.coco, boxes_only, iou_types=("bbox",))) == {
        f"bbox/{m}" for m in METRIC_NAMES}
