"""The pre-training task: one method's small-scale pre-training and its frozen-feature scores."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vitdet_lib.data.pretrain_shapes import shape_pretrain_images

from .. import records as rec
from ..fingerprint import file_sha256
from .launch import finish, fresh_dir, run_command, torchrun_command, uses_torchrun


def pretrain(*, run_name: str, record_path: str, work_dir: str, method: str,
             params: str | None = None, overrides: list[str] = (), evaluate: bool = True,
             fallback_overrides: list[str] = (), launcher: dict[str, Any] | None = None,
             fresh: bool = False, checkpoints_dir: str | None = None,
             parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train one method (official checkpoint layout in ``work_dir``) and score its frozen
    encoder (k-NN, linear probe) against a random-init one.

    ``checkpoints_dir``: also write ``<checkpoints_dir>/<run_name>.pth``, the encoder weights as
    fp16 (``checkpoint.export``): what the profile's fine-tunes start from and what it ships.
    """
    from vitdet_lib.pretrain.commands import default_params, run_eval
    from vitdet_lib.pretrain.config import load_pretrain_config
    from vitdet_lib.pretrain.engine import Pretrainer

    work = fresh_dir(work_dir, fresh)
    path = params or str(default_params(method))
    cfg = load_pretrain_config(path, list(overrides))
    fallback = bool(fallback_overrides)  # Fashion-MNIST absent: shapes, no frozen-feature eval
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if uses_torchrun(launcher) and not fallback:
        args = ["pretrain", "--method", method, "--params", path, "--out", str(work)]
        for o in overrides:
            args += ["--set", o]
        if not evaluate:
            args.append("--no-eval")
        run_command(torchrun_command(launcher, args), work / "torchrun.log")
        if evaluate and (work / "eval.json").is_file():
            result = json.loads((work / "eval.json").read_text())
    else:
        images = labels = None
        if fallback:
            print("note: Fashion-MNIST not installed, pre-training on procedural shape images")
            images, labels = shape_pretrain_images(cfg.data.num_images or 2000, cfg.train.seed)
        trainer = Pretrainer(cfg, work, images=images, labels=labels)
        trainer.run()
        if evaluate and not fallback:
            result = run_eval(trainer.method, cfg, random_baseline=True, figure=None)
    wall = time.perf_counter() - start
    log = [json.loads(line) for line in (work / "log.jsonl").read_text().splitlines()
           if line.strip()] if (work / "log.jsonl").is_file() else []
    epochs = [r for r in log if r.get("type") == "epoch"]
    timed = [(r["steps_timed"], r["images_per_s"]) for r in epochs
             if r.get("steps_timed") and r.get("images_per_s")]
    metrics = {"final_loss": epochs[-1]["loss"] if epochs else None,
               "epochs": epochs[-1]["epoch"] if epochs else None,
               # training throughput over the whole run (step-weighted over its epochs)
               "images_per_s": sum(n * v for n, v in timed) / sum(n for n, _ in timed)
               if timed else None,
               "frozen_eval": {k: v for k, v in result.items() if isinstance(v, dict)}}
    # the checkpoints' sha256: fine-tunes record the one they started from, so a re-run of
    # this pre-training makes them stale (study/fingerprint.py)
    shas = {p.name: file_sha256(p) for p in sorted(work.glob("*.pth"))}
    artifacts: dict[str, Any] = {}
    if checkpoints_dir:
        from vitdet_lib.checkpoint.export import export_backbone

        out = Path(checkpoints_dir) / f"{run_name}.pth"
        artifacts["export"] = export_backbone(work / "last.pth", out)
        shas[out.name] = file_sha256(out)
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters, metrics=metrics,
                             timings={"wall_s": wall}, loss_curve=[
                                 {"epoch": r["epoch"], "loss": r["loss"]} for r in epochs],
                             artifacts={"work_dir": str(work), "checkpoints": sorted(shas),
                                        "checkpoint_sha256": shas, **artifacts})
    return finish(record_path, record)
