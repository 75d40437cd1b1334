"""``evaluate_model`` under a 2-process gloo group: each rank predicts its shard of an odd number
of images (the sampler pads rank 1 with a repeat of the first image), the predictions are
gathered and de-duplicated, and both ranks report AP 100 for an oracle over all the images."""
import json

import pytest
import torch
from gloo import run_gloo

from vitdet_lib.data.coco import CocoDetection, coco_split_paths
from vitdet_lib.data.scenes import write_shape_scenes
from vitdet_lib.evaluation import evaluate_model

NUM_IMAGES = 5  # odd: 3 per rank, one image predicted twice


class _Oracle(torch.nn.Module):
    """Returns each image's ground truth (looked up by the image tensor) and remembers which
    images it was asked about."""

    def __init__(self, dataset: CocoDetection) -> None:
        super().__init__()
        self.samples = [dataset[i] for i in range(len(dataset))]
        self.layer = torch.nn.Linear(1, 1)
        self.seen: list[int] = []

    def forward(self, images):
        outputs = []
        for image in images:
            target = next(t for im, t in self.samples if torch.equal(im, image))
            self.seen.append(int(target["image_id"]))
            keep = target["iscrowd"] == 0
            outputs.append({"boxes": target["boxes"][keep], "labels": target["labels"][keep],
                            "scores": torch.ones(int(keep.sum())),
                            "masks": target["masks"][keep][:, None].float()})
        return outputs


def _dataset(root) -> CocoDetection:
    return CocoDetection(*coco_split_paths(root, "val"), mode="eval")


def _worker(rank, root, out):
    dataset = _dataset(root)
    model = _Oracle(dataset)
    metrics = evaluate_model(model, dataset, "cpu", batch_size=2, output_dir=out / "eval")
    (out / f"rank{rank}.json").write_text(json.dumps({"metrics": metrics, "seen": model.seen}))


def test_two_ranks_gather_and_deduplicate_to_ap_100(tmp_path):
    root = tmp_path / "scenes"
    write_shape_scenes(root, num_images=NUM_IMAGES, image_size=48, seed=3, split="val")
    run_gloo(_worker, tmp_path, root, tmp_path)
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    dataset = _dataset(root)
    all_ids = {int(dataset[i][1]["image_id"]) for i in range(NUM_IMAGES)}
    # the work was split: 3 images per rank, together every image, one of them twice
    assert [len(r["seen"]) for r in ranks] == [3, 3]
    assert set(ranks[0]["seen"]) | set(ranks[1]["seen"]) == all_ids
    for r in ranks:
        m = r["metrics"]
        assert m["num_images"] == NUM_IMAGES
        # a duplicated image's second copy would be a false positive: below 100
        assert m["bbox/AP"] == pytest.approx(100.0) and m["segm/AP"] == pytest.approx(100.0)
    assert ranks[0]["metrics"] == {**ranks[1]["metrics"],
                                   "seconds_per_image": ranks[0]["metrics"]["seconds_per_image"]}
    results = json.loads((tmp_path / "eval" / "coco_results.json").read_text())
    crowd_free = [a for a in dataset.coco.anns.values() if not a.get("iscrowd", 0)]
    assert len(results) == len(crowd_free)
    assert {r["image_id"] for r in results} == all_ids
