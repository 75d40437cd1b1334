"""What the experiment notebooks call: one function per notebook family, each doing the work
and writing the run's success record (``records``). Notebooks only pass their parameters.

Every function takes the runner's common parameters (``run_name``, ``record_path``,
``work_dir``, ``launcher``, ``fallback_overrides``, ``fresh``) and returns the record.
"""
from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import records as rec

TIDE_ERRORS = ("Cls", "Loc", "Both", "Dupe", "Bkg", "Miss")


# ----------------------------------------------------------------------------- launching


def torchrun_command(launcher: dict[str, Any], cli_args: list[str]) -> list[str]:
    """``torchrun ... -m vitdet_lib.cli <cli_args>`` for a ``LauncherConfig`` (as a dict)."""
    cmd = [sys.executable, "-m", "torch.distributed.run",
           f"--nnodes={launcher.get('nnodes', 1)}",
           f"--nproc_per_node={launcher.get('nproc_per_node', 1)}"]
    if launcher.get("rdzv_endpoint"):
        cmd += ["--rdzv_backend=c10d", f"--rdzv_endpoint={launcher['rdzv_endpoint']}"]
    return cmd + ["-m", "vitdet_lib.cli", *cli_args]


def _uses_torchrun(launcher: dict[str, Any] | None) -> bool:
    return bool(launcher) and launcher.get("kind") == "torchrun"


def _run_command(cmd: list[str], log_path: Path) -> None:
    print("$", shlex.join(cmd), flush=True)
    with open(log_path, "a") as log:
        done = subprocess.run(cmd, stdout=log, stderr=subprocess.STDOUT, check=False)
    if done.returncode:
        tail = "".join(log_path.read_text().splitlines(True)[-30:])
        raise RuntimeError(f"{cmd[0]} exited with {done.returncode}; log tail:\n{tail}")


def _fresh(work_dir: str | Path, fresh: bool) -> Path:
    work = Path(work_dir)
    if fresh and work.exists():
        shutil.rmtree(work)
    work.mkdir(parents=True, exist_ok=True)
    return work


def _finish(record_path: str | Path, record: dict[str, Any]) -> dict[str, Any]:
    rec.write_json_atomic(record_path, record)
    print(f"{record['run']}: {record['status']}, record at {record_path}")
    return record


# ----------------------------------------------------------------------------- fine-tuning


def experiment_overrides(*, size_overrides: list[str] = (), init_kind: str = "random",
                         init_checkpoint: str | None = None, init_overrides: list[str] = (),
                         overrides: list[str] = (), fallback_overrides: list[str] = (),
                         lr: float | None = None, weight_decay: float | None = None,
                         drop_path: float | None = None, work_dir: str = "") -> list[str]:
    """The ``--set`` list of one fine-tuning run, most general first (later entries win)."""
    out = [*size_overrides, *fallback_overrides, f"init.kind={init_kind}"]
    if init_checkpoint:
        out.append(f"init.checkpoint={json.dumps(str(init_checkpoint))}")
    out += [*init_overrides, *overrides]
    for key, value in (("train.lr", lr), ("train.weight_decay", weight_decay),
                       ("train.drop_path", drop_path)):
        if value is not None:
            out.append(f"{key}={value}")
    if work_dir:
        out.append(f"output_dir={json.dumps(str(work_dir))}")
    return out


def load_run_experiment(params: str, **kwargs: Any):
    from vitdet_lib.experiment import load_experiment

    return load_experiment(params, experiment_overrides(**kwargs))


def finetune(*, run_name: str, record_path: str, work_dir: str, params: str,
             overrides: list[str] = (), size_overrides: list[str] = (), init_kind: str = "random",
             init_checkpoint: str | None = None, init_overrides: list[str] = (),
             lr: float | None = None, weight_decay: float | None = None,
             drop_path: float | None = None, fallback_overrides: list[str] = (),
             launcher: dict[str, Any] | None = None, fresh: bool = False,
             parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Fine-tune and evaluate one detector (T1, F2, T2, T4, HP); the record keeps the final
    and intermediate evaluations, training speed and memory, and the predictions' location."""
    from vitdet_lib.engine.run import prepare_data
    from vitdet_lib.experiment import save_experiment

    work = _fresh(work_dir, fresh)
    cfg = load_run_experiment(params, size_overrides=size_overrides, init_kind=init_kind,
                              init_checkpoint=init_checkpoint, init_overrides=init_overrides,
                              overrides=overrides, fallback_overrides=fallback_overrides, lr=lr,
                              weight_decay=weight_decay, drop_path=drop_path, work_dir=str(work))
    start = time.perf_counter()
    if _uses_torchrun(launcher):
        save_experiment(cfg, work / "experiment.yaml")
        _run_command(torchrun_command(launcher, ["train", str(work / "experiment.yaml")]),
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
    from vitdet_lib.checkpoint.init import resolve_pos_init

    rel, abs_ = resolve_pos_init(cfg.init, cfg.model.backbone)
    metrics.update(rel_pos_init=rel.value, abs_pos_init=abs_.value,
                   attention=cfg.model.backbone.attention.value,
                   multi_scale=cfg.model.detector.multi_scale)
    paths = prepare_data(cfg.data)
    # the converter's key report (layout, loaded / dropped / new keys) travels with the result
    init_report = rec.read_record(work / "init_report.json")
    record = rec.make_record(
        run_name, rec.SUCCESS, parameters=parameters, metrics=metrics, init_report=init_report,
        timings={"wall_s": wall, "train_time_s": summary.get("train_time_s")},
        eval_history=history, config=summary.get("config"),
        artifacts={"work_dir": str(work), "gt_annotations": str(Path(paths.val_annotations).resolve()),
                   "coco_results": str(work / "eval" / tag / "coco_results.json") if tag
                   else None})
    return _finish(record_path, record)


# ----------------------------------------------------------------------------- pre-training


def shape_pretrain_images(num: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Fallback pre-training set when Fashion-MNIST is absent: 28x28 grey images of one
    filled shape each (4 classes: square, disk, triangle, ring) at random size and place."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:28, :28]
    images = np.zeros((num, 28, 28), np.uint8)
    labels = rng.integers(0, 4, num)
    for i, cls in enumerate(labels):
        r = rng.uniform(5, 11)
        cy, cx = rng.uniform(r, 28 - r, 2)
        d = np.hypot(yy - cy, xx - cx)
        if cls == 0:
            m = (abs(yy - cy) < r * 0.8) & (abs(xx - cx) < r * 0.8)
        elif cls == 1:
            m = d < r
        elif cls == 2:
            m = (yy - cy + r * 0.8 > 0) & (abs(xx - cx) < (yy - cy + r * 0.8) * 0.6)
            m &= yy < cy + r * 0.8
        else:
            m = (d < r) & (d > r * 0.55)
        images[i][m] = rng.integers(120, 256)
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


def pretrain(*, run_name: str, record_path: str, work_dir: str, method: str,
             params: str | None = None, overrides: list[str] = (), evaluate: bool = True,
             fallback_overrides: list[str] = (), launcher: dict[str, Any] | None = None,
             fresh: bool = False, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    """Pre-train one method (official checkpoint layout in ``work_dir``) and score its frozen
    encoder (k-NN, linear probe) against a random-init one."""
    from vitdet_lib.pretrain.commands import default_params, run_eval
    from vitdet_lib.pretrain.config import load_pretrain_config
    from vitdet_lib.pretrain.engine import Pretrainer

    work = _fresh(work_dir, fresh)
    path = params or str(default_params(method))
    cfg = load_pretrain_config(path, list(overrides))
    fallback = bool(fallback_overrides)  # Fashion-MNIST absent: shapes, no frozen-feature eval
    start = time.perf_counter()
    result: dict[str, Any] = {}
    if _uses_torchrun(launcher) and not fallback:
        args = ["pretrain", "--method", method, "--params", path, "--out", str(work)]
        for o in overrides:
            args += ["--set", o]
        if not evaluate:
            args.append("--no-eval")
        _run_command(torchrun_command(launcher, args), work / "torchrun.log")
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
    metrics = {"final_loss": epochs[-1]["loss"] if epochs else None,
               "epochs": epochs[-1]["epoch"] if epochs else None,
               "frozen_eval": {k: v for k, v in result.items() if isinstance(v, dict)}}
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters, metrics=metrics,
                             timings={"wall_s": wall}, loss_curve=[
                                 {"epoch": r["epoch"], "loss": r["loss"]} for r in epochs],
                             artifacts={"work_dir": str(work),
                                        "checkpoints": sorted(p.name for p in work.glob("*.pth"))})
    return _finish(record_path, record)


# ----------------------------------------------------------------------------- T3 and T5


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _report_dict(report: Any) -> dict[str, Any]:
    from dataclasses import asdict

    out = asdict(report)
    out.pop("env", None)
    return out


def memory_time(*, run_name: str, record_path: str, results_dir: str, params: str,
                layouts: list[str], size_overrides: list[str] = (), overrides: list[str] = (),
                ap_runs: dict[str, str] | None = None, iters: int = 2,
                fallback_overrides: list[str] = (), parameters: dict[str, Any] | None = None,
                **_: Any) -> dict[str, Any]:
    """T3: peak training memory, train s/iter and inference s/img of each attention layout,
    with the AP of the fine-tune run named in ``ap_runs`` when that run has a success record."""
    from vitdet_lib.complexity import measure
    from vitdet_lib.engine.run import effective_model_config
    from vitdet_lib.model import build_detector

    rows = []
    for layout in layouts:
        cfg = load_run_experiment(params, size_overrides=size_overrides,
                                  fallback_overrides=fallback_overrides,
                                  overrides=[*overrides, f"model.backbone.attention={layout}"])
        row: dict[str, Any] = {"layout": layout}
        try:
            torch.manual_seed(0)
            model = build_detector(effective_model_config(cfg))
            report = measure(model, run_name, cfg.model.detector.image_size, layout, _device(),
                             timing=True, iters=iters)
            row.update(train_peak_mem_mb=report.train_peak_mem_mb,
                       train_s_per_iter=report.train_step_s,
                       infer_s_per_img=report.infer_s_per_img)
        except torch.OutOfMemoryError as err:  # the paper's "global" at 1024 on a 32 GB GPU
            row.update(error=f"out of memory: {err}".splitlines()[0])
        source = (ap_runs or {}).get(layout)
        ft = rec.read_record(rec.record_path(results_dir, source)) if source else None
        row["ap_run"] = source
        if rec.is_success(ft):
            row.update({k: ft["metrics"].get(k) for k in ("bbox/AP", "segm/AP")})
        rows.append(row)
        print(row)
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters,
                             metrics={"layouts": rows})
    return _finish(record_path, record)


def complexity(*, run_name: str, record_path: str, params: str,
               sizes: dict[str, list[str]], resnet_depth: int | None = 101, timing: bool = True,
               iters: int = 1, fallback_overrides: list[str] = (),
               parameters: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """T5: parameters, FLOPs (torch's count and the paper's multiply-adds), activations and
    speed of each ViT size of the profile, and of a ResNet FPN Mask R-CNN."""
    from vitdet_lib.complexity import measure
    from vitdet_lib.model import build_detector, build_resnet_detector

    rows = []
    cfg = None
    for size, size_overrides in sizes.items():
        cfg = load_run_experiment(params, size_overrides=size_overrides,
                                  fallback_overrides=fallback_overrides)
        torch.manual_seed(0)
        report = measure(build_detector(cfg.model), f"ViT-{size}", cfg.model.detector.image_size,
                         cfg.model.backbone.attention.value, _device(), timing=timing, iters=iters)
        rows.append(_report_dict(report))
    if resnet_depth and cfg is not None:
        report = measure(build_resnet_detector(cfg.model.detector, resnet_depth),
                         f"ResNet-{resnet_depth}", cfg.model.detector.image_size, "-", _device(),
                         timing=timing, iters=iters)
        rows.append(_report_dict(report))
    for r in rows:
        r["fps"] = 1.0 / r["infer_s_per_img"] if r.get("infer_s_per_img") else None
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters,
                             metrics={"models": rows, "flop_convention":
                                      "gflops: torch (multiply-add = 2); gmacs: paper/fvcore"})
    return _finish(record_path, record)


# ----------------------------------------------------------------------------- F4


def tide_errors(gt_json: str | Path, results_json: str | Path, name: str) -> dict[str, float]:
    """TIDE's main errors (dAP at IoU 0.5, boxes) of one predictions file; GT from ``path=``
    (tidecv downloads COCO's annotations otherwise)."""
    import contextlib
    import io

    from tidecv import TIDE, datasets

    gt = datasets.COCO(path=str(gt_json), name="gt")
    preds = datasets.COCOResult(path=str(results_json), name=name)
    tide = TIDE()
    with contextlib.redirect_stdout(io.StringIO()):
        tide.evaluate(gt, preds, pos_threshold=0.5, mode=TIDE.BOX, name=name)
    errors = tide.get_all_errors()["main"][name]
    return {k: float(errors[k]) for k in TIDE_ERRORS}


def tide(*, run_name: str, record_path: str, results_dir: str, sources: list[str],
         parameters: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """F4: TIDE errors of the final predictions of each fine-tune run in ``sources``."""
    rows = []
    for source in sources:
        ft = rec.read_record(rec.record_path(results_dir, source))
        row: dict[str, Any] = {"source": source}
        if not rec.is_success(ft):
            row["error"] = "no successful fine-tune record"
        else:
            row["init"] = ft["parameters"].get("init")
            row["size"] = ft["parameters"].get("size")
            art = ft.get("artifacts", {})
            results_json = art.get("coco_results")
            if not results_json or not Path(results_json).is_file() or not json.loads(
                    Path(results_json).read_text()):
                row["error"] = "no predictions to analyse"
            else:
                row.update(tide_errors(art["gt_annotations"], results_json, source))
        rows.append(row)
        print(row)
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters,
                             metrics={"tide": rows, "pos_threshold": 0.5, "mode": "bbox"})
    return _finish(record_path, record)


def call(task: Any, parameters: dict[str, Any]) -> dict[str, Any]:
    """Call ``task`` with the notebook's parameters it accepts; the record keeps them all."""
    import inspect

    if parameters.get("torch_threads"):
        torch.set_num_threads(int(parameters["torch_threads"]))
    accepted = inspect.signature(task).parameters
    kwargs = {k: v for k, v in parameters.items() if k in accepted and k != "parameters"}
    return task(**kwargs, parameters=dict(parameters))
