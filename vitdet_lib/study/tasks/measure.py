"""Table 3's and Table 5's tasks: memory, time and complexity of untrained detectors."""
from __future__ import annotations

from dataclasses import asdict
from typing import Any

import torch
from torch import nn

from vitdet_lib.complexity import measure
from vitdet_lib.model import build_detector, build_resnet_detector

from .. import records as rec
from .finetune import load_run_experiment
from .launch import finish


def _device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def _report_dict(report: Any) -> dict[str, Any]:
    out = asdict(report)
    out.pop("env", None)
    return out


def training_state_mb(model: nn.Module) -> float:
    """MB that live across training steps: parameters, their gradients and AdamW's two moments
    (fp32, as the trainer keeps them), whatever the step's own peak adds on top."""
    n = sum(p.numel() * p.element_size() for p in model.parameters() if p.requires_grad)
    frozen = sum(p.numel() * p.element_size() for p in model.parameters() if not p.requires_grad)
    buffers = sum(b.numel() * b.element_size() for b in model.buffers())
    return (frozen + buffers + n * 4) / 2**20  # weights + grads + exp_avg + exp_avg_sq


def _ap_sources(value: str | list[str] | None) -> list[str]:
    return [] if value is None else [value] if isinstance(value, str) else list(value)


def memory_time(*, run_name: str, record_path: str, results_dir: str, params: str,
                layouts: list[str], size_overrides: list[str] = (), overrides: list[str] = (),
                ap_runs: dict[str, str | list[str]] | None = None, iters: int = 2,
                fallback_overrides: list[str] = (), parameters: dict[str, Any] | None = None,
                **_: Any) -> dict[str, Any]:
    """T3: training memory (the step's own peak, and the total with weights, gradients and
    optimizer state), train s/iter and inference s/img of each attention layout, with the AP of
    the fine-tune runs named in ``ap_runs`` (the runner makes this run wait for them)."""
    rows = []
    for layout in layouts:
        cfg = load_run_experiment(params, size_overrides=size_overrides,
                                  fallback_overrides=fallback_overrides,
                                  overrides=[*overrides, f"model.backbone.attention={layout}"])
        row: dict[str, Any] = {"layout": layout}
        try:
            torch.manual_seed(0)
            model = build_detector(cfg.model)
            report = measure(model, run_name, cfg.model.detector.image_size, layout, _device(),
                             timing=True, iters=iters)
            state = training_state_mb(model)
            row.update(train_peak_mem_mb=report.train_peak_mem_mb, train_state_mb=state,
                       train_total_mem_mb=(report.train_peak_mem_mb or 0.0) + state,
                       train_s_per_iter=report.train_step_s,
                       infer_s_per_img=report.infer_s_per_img)
        except torch.OutOfMemoryError as err:  # the paper's "global" at 1024 on a 32 GB GPU
            row.update(error=f"out of memory: {err}".splitlines()[0])
        sources = _ap_sources((ap_runs or {}).get(layout))
        row["ap_runs"] = sources
        fts = [rec.read_record(rec.record_path(results_dir, s)) for s in sources]
        row["ap_status"] = [(r or {}).get("status", "no run") for r in fts]
        ok = [r for r in fts if rec.is_success(r)]
        for key in ("bbox/AP", "segm/AP", "test/bbox/AP", "test/segm/AP"):
            values = [v for r in ok if (v := rec.finite(r["metrics"].get(key))) is not None]
            if values:
                row[key] = sum(values) / len(values)
                row[f"{key} n"] = len(values)
        rows.append(row)
        print(row)
    record = rec.make_record(run_name, rec.SUCCESS, parameters=parameters,
                             metrics={"layouts": rows})
    return finish(record_path, record)


def complexity(*, run_name: str, record_path: str, params: str,
               sizes: dict[str, list[str]], resnet_depth: int | None = 101, timing: bool = True,
               iters: int = 1, fallback_overrides: list[str] = (),
               parameters: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    """T5: parameters, FLOPs (torch's count and the paper's multiply-adds), activations and
    speed of each ViT size of the profile, and of a ResNet FPN Mask R-CNN."""
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
    return finish(record_path, record)
