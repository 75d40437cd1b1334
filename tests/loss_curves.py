"""Fixed-seed loss curves of a tiny fine-tuning run and tiny pre-training runs.

They pin the numerics of the training loop: ``tests/fixtures/loss_curves_*.json`` hold curves
recorded from the code at a known commit, and ``test_engine_numerics.py`` asserts the current
code reproduces them exactly (CPU, one thread). Only public entry points are used
(``load_experiment`` + ``engine.train``, ``Pretrainer(...).run()``), so the recorder runs
unchanged across refactors of the loop.

Regenerate (only when a change of numerics is intended, and say so in the commit)::

    PYTHONPATH=$PWD OMP_NUM_THREADS=1 python tests/loss_curves.py [finetune] [supervised ...]
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures"
PARAMS = Path(__file__).resolve().parents[1] / "params" / "smoke_shapes.yaml"
METHODS = ("supervised", "mocov3", "beit", "mae")
# the values a step record carries that depend on the numerics (never times or memory)
_SKIP = {"time", "data_time", "max_mem_mb", "step_mem_mb", "wall_s", "images_per_s", "epoch",
         "type", "steps_timed"}


def fixture_path(name: str) -> Path:
    return FIXTURES / f"loss_curves_{name}.json"


def _numeric(record: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in record.items() if k not in _SKIP}


def finetune_curve(work: Path) -> list[dict[str, Any]]:
    """20 optimizer steps of a tiny ViT Mask R-CNN on shape scenes: accumulation (4 = 2 x 2),
    clipping, warmup and drop path all on the path; one line per step."""
    from vitdet_lib.engine import train
    from vitdet_lib.experiment import load_experiment

    cfg = load_experiment(PARAMS, [
        f"output_dir={json.dumps(str(work / 'finetune'))}",
        f"data.cache_dir={json.dumps(str(work / 'data'))}",
        "data.generated.num_train=16", "data.generated.num_val=0",
        "train.max_iters=20", "train.batch_size=4", "train.batch_per_device=2",
        "train.log_every=1", "train.checkpoint_every=10", "train.clip_grad=1.0",
        "train.warmup_epochs=1.0", "train.device=cpu", "model.backbone.drop_path_rate=0.1",
    ])
    train(cfg)
    lines = (work / "finetune" / "metrics.jsonl").read_text().splitlines()
    return [_numeric(json.loads(ln)) for ln in lines]


def pretrain_curve(method: str, work: Path) -> list[dict[str, Any]]:
    """6 optimizer steps (1.5 epochs of 64 images at batch 16 = 2 x 8; MoCo v3 1 x 16) of a tiny
    encoder."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from pretrain_tiny import tiny_cfg, train_images

    from vitdet_lib.pretrain.engine import Pretrainer

    images, labels = train_images(256)
    # MoCo v3 refuses accumulation (it would shrink its negatives): one pass of 16 there
    per_device = 16 if method == "mocov3" else 8
    cfg = tiny_cfg(method, train={"epochs": 1.5, "batch_size": 16,
                                  "batch_per_device": per_device, "clip_grad": 1.0,
                                  "weight_decay": 0.05})
    torch.manual_seed(0)
    out = work / method
    Pretrainer(cfg, out, images=images[:64], labels=labels[:64]).run()
    lines = [json.loads(ln) for ln in (out / "log.jsonl").read_text().splitlines()]
    return [_numeric(r) for r in lines if r.get("type") == "step"]


def record(name: str, work: Path) -> list[dict[str, Any]]:
    """The curve ``name`` (``finetune`` or a pre-training method) computed now."""
    torch.manual_seed(0)
    return finetune_curve(work) if name == "finetune" else pretrain_curve(name, work)


def main(names: list[str]) -> None:
    torch.set_num_threads(1)
    FIXTURES.mkdir(exist_ok=True)
    for name in names or ["finetune", *METHODS]:
        with tempfile.TemporaryDirectory() as tmp:
            curve = record(name, Path(tmp))
        fixture_path(name).write_text(json.dumps(curve, indent=1) + "\n")
        print(f"{name}: {len(curve)} steps, loss {curve[0]['loss']:.6g} -> {curve[-1]['loss']:.6g}")


if __name__ == "__main__":
    main(sys.argv[1:])
