"""The fine-tuning task (T1, F2, T2, T3's AP runs, T4, F3, the tuning sweeps)."""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from vitdet_lib.checkpoint.init import resolve_pos_init
from vitdet_lib.experiment import ExperimentConfig, load_experiment, save_experiment

from .. import records as rec
from .launch import finish, fresh_dir, run_command, torchrun_command, uses_torchrun


def experiment_overrides(*, size_overrides: list[str] = (), init_kind: str = "random",
                         init_checkpoint: str | None = None, init_overrides: list[str] = (),
                         overrides: list[str] = (), fallback_overrides: list[str] = (),
                         lr: float | None = None, weight_decay: float | None = None,
                         drop_path: float | None = None, epochs: float | None = None,
                         seed: int | None = None, work_dir: str = "") -> list[str]:
    """The ``--set`` list of one fine-tuning run, most general first (later entries win).

    ``epochs`` replaces the params file's schedule (and clears its ``max_iters``): the study's
    schedules are separate runs of that many epochs, each with its own full cosine decay.
    """
    out = [*size_overrides, *fallback_overrides, f"init.kind={init_kind}"]
    if init_checkpoint:
        out.append(f"init.checkpoint={json.dumps(str(init_checkpoint))}")
    out += [*init_overrides, *overrides]
    if epochs is not None:
        out += [f"train.epochs={float(epochs)}", "train.max_iters=null"]
    for key, value in (("train.lr", lr), ("train.weight_decay", weight_decay),
                       ("model.backbone.drop_path_rate", drop_path), ("train.seed", seed)):
        if value is not None:
            out.append(f"{key}={value}")
    if work_dir:
        out.append(f"output_dir={json.dumps(str(work_dir))}")
    return out


def load_run_experiment(params: str, **kwargs: Any) -> ExperimentConfig:
    return load_experiment(params, experiment_overrides(**kwargs))


def finetune(*, run_name: str, record_path: str, work_dir: str, params: str,
             overrides: list[str] = (), size_overrides: list[str] = (), init_kind: str = "random",
             init_checkpoint: str | None = None, init_overrides: list[str] = (),
             lr: float | None = None, weight_decay: float | None = None,
             drop_path: float | None = None, epochs: float | None = None,
             seed: int | None = None, fallback_overrides: list[str] = (),
             launcher: dict[str, Any] | None = None, fresh: bool = False,
             parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate one detector; the record keeps the final evaluations (validation
    split: ``bbox/AP`` ...; test split, when the data has one: ``test/bbox/AP`` ...), the
    intermediate ones, training speed and memory, and the predictions' location."""
    from vitdet_lib.data.prepare import prepare_data

    work = fresh_dir(work_dir, fresh)
    cfg = load_run_experiment(params, size_overrides=size_overrides, init_kind=init_kind,
                              init_checkpoint=init_checkpoint, init_overrides=init_overrides,
                              overrides=overrides, fallback_overrides=fallback_overrides, lr=lr,
                              weight_decay=weight_decay, drop_path=drop_path, epochs=epochs,
                              seed=seed, work_dir=str(work))
    start = time.perf_counter()
    if uses_torchrun(launcher):
        save_experiment(cfg, work / "experiment.yaml")
        run_command(torchrun_command(launcher, ["train", str(work / "experiment.yaml")]),
                    work / "torchrun.log")
        summary = json.loads((work / "metrics.json").read_text())
    else:
        from vitdet_lib.engine import train

        summary = train(cfg)
    wall = time.perf_counter() - start
    final = summary.get("final_eval") or {}
    history = [{k: h.get(k) for k in ("iter", "epoch", "fraction", "bbox/AP", "segm/AP",
                                      "bbox/AP50")} for h in summary.get("eval_history", [])]
    tag = f"iter_{final['iter']:07d}" if final else None
    n_img = final.get("num_images") or 0
    metrics = {k: v for k, v in final.items() if "/" in k}
    metrics.update(iterations=summary.get("iterations"), epochs=summary.get("epochs"),
                   train_s_per_iter=summary.get("time_per_iter_s"),
                   infer_s_per_img=(final.get("eval_time_s", 0) / n_img) if n_img else None,
                   max_mem_mb=summary.get("max_mem_mb"), step_mem_mb=summary.get("step_mem_mb"))
    test = _evaluate_test(cfg, work, launcher)
    metrics.update(test)
    rel, abs_ = resolve_pos_init(cfg.init, cfg.model.backbone)
    metrics.update(rel_pos_init=rel.value, abs_pos_init=abs_.value,
                   attention=cfg.model.backbone.attention.value,
                   multi_scale=cfg.model.detector.multi_scale, seed=cfg.train.seed,
                   lr=cfg.train.lr, weight_decay=cfg.train.weight_decay,
                   drop_path=cfg.model.backbone.drop_path_rate)
    paths = prepare_data(cfg.data)
    # the converter's key report (layout, loaded / dropped / new keys) travels with the result
    init_report = rec.read_record(work / "init_report.json")
    record = rec.make_record(
        run_name, rec.SUCCESS, parameters=parameters, metrics=metrics, init_report=init_report,
        timings={"wall_s": wall, "train_time_s": summary.get("train_time_s")},
        eval_history=history, config=summary.get("config"),
        artifacts={"work_dir": str(work),
                   "gt_annotations": str(Path(paths.val_annotations).resolve()),
                   "coco_results": str(work / "eval" / tag / "coco_results.json") if tag
                   else None,
                   "test_gt_annotations": str(Path(paths.test_annotations).resolve())
                   if test else None,
                   "test_coco_results": str(work / "eval_last_test" / "coco_results.json")
                   if test else None})
    return finish(record_path, record)


def _evaluate_test(cfg: ExperimentConfig, work: Path, launcher: dict[str, Any] | None
                   ) -> dict[str, Any]:
    """The final model on the held-out test scenes (``test/bbox/AP`` ...), when the data has a
    test split; {} otherwise. Only reported, never used for any choice."""
    gen = cfg.data.generated
    if gen is None or gen.num_test <= 0:
        return {}
    last = work / "last.pth"
    if uses_torchrun(launcher):
        run_command(torchrun_command(launcher, ["eval", str(work / "experiment.yaml"),
                                                "--checkpoint", str(last), "--split", "test"]),
                    work / "torchrun.log")
        raw = json.loads((work / "eval_last_test" / "metrics.json").read_text())
        return {f"test/{k}": v for k, v in raw.items() if "/" in k}
    from vitdet_lib.engine.run import evaluate

    return {k: v for k, v in evaluate(cfg, last, split="test").items() if "/" in k}
