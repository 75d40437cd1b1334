"""The held-out test split: disjoint item pools, written by ``prepare_data`` when
``data.generated.num_test > 0``, and evaluated by ``evaluate(..., split="test")``."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitdet_lib.data.coco import coco_split_paths
from vitdet_lib.data.fashion import _pool_digest, _pools, fashion_mnist_dir, write_fashion_scenes
from vitdet_lib.engine.run import evaluate, prepare_data
from vitdet_lib.experiment import GeneratedDataConfig, load_experiment
from vitdet_lib.model import build_detector

PARAMS = Path(__file__).resolve().parents[1] / "params" / "smoke_shapes.yaml"
needs_fashion = pytest.mark.skipif(
    not (fashion_mnist_dir() / "t10k-images-idx3-ubyte.gz").is_file(),
    reason="Fashion-MNIST not installed")


def test_pools_are_disjoint_and_do_not_depend_on_split_order():
    three = _pools(10_000, 3, ["train", "val", "test"], 0.3)
    assert {k: len(v) for k, v in three.items()} == {"train": 7000, "val": 1500, "test": 1500}
    together = np.concatenate(list(three.values()))
    assert len(np.unique(together)) == 10_000  # disjoint and covering every item
    shuffled = _pools(10_000, 3, ["test", "train", "val"], 0.3)
    for split in three:
        assert np.array_equal(three[split], shuffled[split]), split
    two = _pools(10_000, 3, ["train", "val"], 0.3)
    # without a test split val keeps the whole held-back share (existing datasets unchanged)
    assert len(two["val"]) == 3000 and np.array_equal(two["train"], three["train"])
    assert set(three["val"]) | set(three["test"]) == set(two["val"])


def test_cache_name_changes_only_with_a_test_split():
    gen = GeneratedDataConfig(num_train=8, num_val=4)
    assert gen.cache_name == "shapes_64px_8train_4val_seed0"
    gen.num_test = 3
    assert gen.cache_name == "shapes_64px_8train_4val_3test_seed0"


@needs_fashion
def test_fashion_test_split_uses_its_own_items(tmp_path):
    paths = write_fashion_scenes(tmp_path, {"train": 6, "val": 4, "test": 4}, image_size=128,
                                 seed=5)
    assert set(paths) == {"train", "val", "test"}
    sheet = json.loads((tmp_path / "datasheet.json").read_text())
    pools = _pools(10_000, 5, ["train", "val", "test"], 0.3)
    items = {}
    for split, path in paths.items():
        data = json.loads(path.read_text())
        items[split] = {a["fashion_mnist_test_index"] for a in data["annotations"]}
        assert items[split] <= set(pools[split].tolist()), split
        assert sheet["splits"][split]["item_pool_sha256"] == _pool_digest(pools[split])
        assert sheet["splits"][split]["item_pool_size"] == len(pools[split])
        assert (tmp_path / "images" / split / "000000.png").is_file()
    assert not items["train"] & items["test"] and not items["val"] & items["test"]
    assert not items["train"] & items["val"]


def _tiny(tmp_path: Path, num_test: int):
    return load_experiment(PARAMS, [f"data.cache_dir={tmp_path / 'data'}",
                                    "data.generated.num_train=2", "data.generated.num_val=2",
                                    f"data.generated.num_test={num_test}",
                                    f"output_dir={tmp_path / 'run'}", "train.device=cpu"])


def test_prepare_data_writes_and_returns_the_test_split(tmp_path):
    without = prepare_data(_tiny(tmp_path, 0).data)
    assert without.test_images is None and without.test_annotations is None
    paths = prepare_data(_tiny(tmp_path, 3).data)
    assert paths.test_annotations is not None
    assert (paths.test_images, paths.test_annotations) == coco_split_paths(
        paths.train_annotations.parent.parent, "test")
    data = json.loads(paths.test_annotations.read_text())
    assert len(data["images"]) == 3 and data["info"]["split"] == "test"
    val = json.loads(paths.val_annotations.read_text())
    assert data["annotations"] != val["annotations"]


def test_evaluate_on_the_test_split(tmp_path):
    cfg = _tiny(tmp_path, 3)
    torch.manual_seed(0)
    model = build_detector(cfg.model)
    weights = tmp_path / "weights.pth"
    torch.save(model.state_dict(), weights)
    metrics = evaluate(cfg, weights, split="test")
    assert metrics["test/num_images"] == 3.0  # the 3 test scenes, not the 2 val ones
    assert "test/bbox/AP" in metrics and not any(k.startswith("bbox/") for k in metrics)
    record = json.loads((tmp_path / "run" / "eval_weights_test" / "record.json").read_text())
    assert record["split"] == "test" and set(record["metrics"]) == set(metrics)
    val = evaluate(cfg, weights)
    assert val["num_images"] == 2.0
    with pytest.raises(Exception, match="num_test > 0"):
        evaluate(_tiny(tmp_path, 0), weights, split="test")
