"""End to end through the CLI: a tiny ViT Mask R-CNN on generated shape scenes is trained,
evaluated during training, "killed" and resumed to the same weights, and evaluated again."""
import json
import shutil
from pathlib import Path

import torch

from vitdet_lib import cli
from vitdet_lib.engine import checkpoint as ckpt

PARAMS = Path(__file__).resolve().parents[1] / "params" / "smoke_shapes.yaml"


def test_train_resume_and_eval_on_shape_scenes(tmp_path):
    out = tmp_path / "run"
    common = [str(PARAMS), "--output-dir", str(out),
              "--set", f"data.cache_dir={tmp_path / 'data'}",
              "--set", "data.generated.num_train=8", "--set", "data.generated.num_val=4",
              "--set", "train.max_iters=6", "--set", "train.checkpoint_every=3",
              "--set", "train.eval_at=[0.5,1.0]"]
    assert cli.main(["train", *common]) == 0
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in evals] == [3, 6]
    assert {"bbox/AP", "segm/AP", "num_images"} <= set(evals[-1])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["iterations"] == 6 and summary["final_eval"]["iter"] == 6
    assert (out / "eval" / "iter_0000006" / "coco_results.json").is_file()
    uninterrupted = ckpt.load_checkpoint(out / "last.pth")["model"]

    # as if killed during step 4..6: only the checkpoint of step 3 survives
    (out / ckpt.checkpoint_name(6)).unlink()
    shutil.copyfile(out / ckpt.checkpoint_name(3), out / "last.pth")
    assert cli.main(["train", *common]) == 0
    resumed = ckpt.load_checkpoint(out / "last.pth")
    assert resumed["iteration"] == 6
    for name, value in uninterrupted.items():
        # drop path, RPN/RoI sampling and LSJ all drew random numbers: bitwise on CPU
        assert torch.equal(value, resumed["model"][name]), name

    assert cli.main(["eval", *common, "--checkpoint", str(out / "last.pth")]) == 0
    record = json.loads((out / "eval_last" / "record.json").read_text())
    assert record["iteration"] == 6
    assert record["metrics"]["bbox/AP"] == evals[-1]["bbox/AP"]
