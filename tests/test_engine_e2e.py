"""End to end through the CLI: a tiny ViT Mask R-CNN on generated shape scenes is trained (as a
separate process, from another working directory: exit status 0), evaluated during training,
"killed" and resumed to the same weights, and evaluated again."""
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import torch

from vitdet_lib import cli
from vitdet_lib.engine import checkpoint as ckpt

REPO = Path(__file__).resolve().parents[1]
PARAMS = REPO / "params" / "smoke_shapes.yaml"


def test_train_resume_and_eval_on_shape_scenes(tmp_path):
    out = tmp_path / "run"
    common = [str(PARAMS), "--output-dir", str(out),
              "--set", f"data.cache_dir={tmp_path / 'data'}", "--set", "train.device=cpu",
              "--set", "data.generated.num_train=8", "--set", "data.generated.num_val=4",
              "--set", "train.max_iters=6", "--set", "train.checkpoint_every=3",
              "--set", "train.log_every=1", "--set", "train.eval_at=[0.5,1.0]"]
    env = {**os.environ,
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
           "OMP_NUM_THREADS": str(torch.get_num_threads())}
    done = subprocess.run([sys.executable, "-m", "vitdet_lib.cli", "train", *common],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    evals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert [e["iter"] for e in evals] == [3, 6]
    assert {"bbox/AP", "segm/AP", "num_images"} <= set(evals[-1])
    summary = json.loads((out / "metrics.json").read_text())
    assert summary["iterations"] == 6 and summary["final_eval"]["iter"] == 6
    assert (out / "eval" / "iter_0000006" / "coco_results.json").is_file()
    uninterrupted = ckpt.load_checkpoint(out / "last.pth")["model"]
    logged = (out / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["iter"] for line in logged] == [1, 2, 3, 4, 5, 6]

    # as if killed during step 4..6: only the checkpoint of step 3 survives
    (out / ckpt.checkpoint_name(6)).unlink()
    shutil.copyfile(out / ckpt.checkpoint_name(3), out / "last.pth")
    torch.manual_seed(999)  # this process's RNG state must not matter: the checkpoint's does
    assert cli.main(["train", *common]) == 0
    resumed = ckpt.load_checkpoint(out / "last.pth")
    assert resumed["iteration"] == 6
    for name, value in uninterrupted.items():
        # drop path, RPN/RoI sampling and LSJ all drew random numbers: bitwise on CPU
        assert torch.equal(value, resumed["model"][name]), name
    # steps 4-6 were run again, steps 1-3 were not: their records (timings included) are the
    # first process's; a run that ignored last.pth would have rewritten them
    relogged = (out / "metrics.jsonl").read_text().splitlines()
    assert relogged[:3] == logged[:3] and relogged[3:] != logged[3:]
    assert [json.loads(line)["iter"] for line in relogged] == [1, 2, 3, 4, 5, 6]
    reevals = [json.loads(line) for line in (out / "eval.jsonl").read_text().splitlines()]
    assert reevals[0] == evals[0] and reevals[1]["eval_time_s"] != evals[1]["eval_time_s"]

    assert cli.main(["eval", *common, "--checkpoint", str(out / "last.pth")]) == 0
    record = json.loads((out / "eval_last" / "record.json").read_text())
    assert record["iteration"] == 6
    assert record["metrics"]["bbox/AP"] == evals[-1]["bbox/AP"]
