"""``vitdet-bench bench``: the performance benchmark of issue 7, in one run, as ratios.

Parts (``--parts``):
  probe     fp32 (bf16 on CUDA with AMP) square matmul FLOP/s: the practical peak every
            achieved FLOP/s is divided by. Re-run before each measured configuration, so load
            drift during the run shows up in ``probe_gflops_s`` instead of in the efficiencies.
  backbone  ViT backbone forward (no grad) and forward+backward time, FLOPs (torch's counter,
            multiply-add = 2; ``*_gmacs`` = fvcore/paper convention) and peak memory, for each
            attention layout x input size; the exponent of cost vs tokens is fitted per layout.
  detector  the full Mask R-CNN's training step (time, peak memory) and inference images/s
            with the paper's fixed square padding.
  data      LSJ loading images/s (CocoDetection + lsj_transform + DataLoader workers).

Peak memory is the step's own memory (activations, gradients, temporaries; weights excluded):
CUDA's allocator statistics on a GPU, ``LiveMemoryTracker`` (live tensor storages) on CPU.
"""
from __future__ import annotations

import argparse
import contextlib
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from .config import AttentionLayout, DetectorConfig, ModelConfig, vit_config
from .io import provenance, write_json_atomic
from .model.attention import naive_attention
from .profiling import count_flops, peak_memory, time_call

# untracked (git-ignored): a plain run never overwrites the committed results/bench records
DEFAULT_OUT = Path("work_dirs/bench")

# Dense (no sparsity) bf16 tensor-core peaks from the vendors' data sheets, TFLOP/s (multiply-add
# = 2). The FLOP utilisation the issue asks for is achieved FLOP/s over this; the matmul probe
# gives the practical peak beside it.
DEVICE_BF16_PEAK_TFLOPS = {
    "H100 SXM": 989.4, "H100 80GB HBM3": 989.4, "H100 NVL": 835.0, "H100 PCIe": 756.0,
    "H200": 989.4, "A100": 312.0, "L40S": 362.1, "V100": 125.0,  # V100: fp16 (no bf16)
}


def device_peak_tflops(device: torch.device) -> float | None:
    """The data-sheet bf16 peak of a CUDA device, matched on its name; None when unknown/CPU."""
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    for key in sorted(DEVICE_BF16_PEAK_TFLOPS, key=len, reverse=True):  # most specific first
        if all(part in name for part in key.split()):
            return DEVICE_BF16_PEAK_TFLOPS[key]
    return None


def fit_exponent(tokens: list[float], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(tokens): cost ~ tokens ** slope."""
    if len(tokens) < 2:
        return float("nan")
    xs = [math.log(t) for t in tokens]
    ys = [math.log(v) for v in values]
    mx, my = sum(xs) / len(xs), sum(ys) / len(ys)
    var = sum((x - mx) ** 2 for x in xs)
    return sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / var if var else float("nan")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    if amp == "off":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def probe_gflops(device: torch.device, amp: str, n: int = 2048, iters: int = 3) -> float:
    """Matmul FLOP/s (2 n^3 per product) in the dtype the model's matmuls run in."""
    dtype = torch.float32 if amp == "off" else (torch.bfloat16 if amp == "bf16" else torch.float16)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / time_call(lambda: a @ b, device, iters=iters, warmup=1) / 1e9


def counted_run(fn: Callable[[], Any], device: torch.device) -> tuple[float, float]:
    """Two calls of ``fn`` (also the warm-up): GFLOPs from the first, peak MB of the call's own
    memory from the second. Not one call under both modes: ``FlopCounterMode``'s module tracking
    keeps tensors alive that activation checkpointing would free (ViT-B global+checkpointing at
    512: 1027 MB counted together, 783 MB alone)."""
    return count_flops(fn) / 1e9, peak_memory(fn, device) / 2**20


def _is_oom(err: BaseException) -> bool:
    return isinstance(err, torch.cuda.OutOfMemoryError) or "out of memory" in str(err).lower()


def _free(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()


def _allocate_grads(model: torch.nn.Module) -> None:
    """Gradients exist before a measured step, as in training (without spending a step on it)."""
    for p in model.parameters():
        if p.requires_grad and p.grad is None:
            p.grad = torch.zeros_like(p)


def _clear_mask_cache(model: torch.nn.Module) -> None:
    for m in model.modules():
        if hasattr(m, "clear_mask_cache"):
            m.clear_mask_cache()  # a first inference builds its masks: count them


def bench_backbone(args: argparse.Namespace, device: torch.device,
                   log: Callable[[str], None]) -> dict:
    from .model.vit import ViT

    rows = []
    for impl, layout in ((i, lay) for i in args.attention_impls for lay in args.layouts):
        for size in args.image_sizes:
            if impl == "naive" and args.naive_max_size and size > args.naive_max_size:
                continue
            do_fwd = layout != AttentionLayout.GLOBAL_CHECKPOINT.value  # same forward as global
            do_train = size in args.train_sizes
            if not (do_fwd or do_train):
                continue
            cfg = vit_config(args.size, attention=AttentionLayout(layout), drop_path_rate=0.0)
            vit = ViT(cfg, img_size=size).to(device)
            x = torch.randn(1, 3, size, size, device=device)
            row: dict[str, Any] = {
                "layout": layout, "impl": impl, "image_size": size,
                "tokens": (size // cfg.patch_size) ** 2,
                "probe_gflops_s": probe_gflops(device, args.amp, args.probe_size)}
            try:
                with naive_attention(impl == "naive"):
                    _measure_backbone(vit, x, row, do_fwd, do_train, args, device)
            except RuntimeError as err:
                if not _is_oom(err):
                    raise
                row["oom"] = str(err).splitlines()[0]
            rows.append(row)
            log(_fmt_row(row))
            del vit, x
            _free(device)
    fits: dict[str, dict[str, float]] = {}
    for impl, layout in ((i, lay) for i in args.attention_impls for lay in args.layouts):
        name = layout if impl == "fused" else f"{layout}/{impl}"
        fits[name] = {}
        for key in ("fwd_s", "fwd_gflops", "train_s", "train_peak_mb"):
            pts = [(r["tokens"], r[key]) for r in rows
                   if r["layout"] == layout and r["impl"] == impl and key in r]
            if len(pts) >= 2:
                fits[name][key] = fit_exponent([p[0] for p in pts], [p[1] for p in pts])
    ratios = _ratios_to_hybrid(rows)
    return {"size": args.size, "rows": rows, "exponent_vs_tokens": fits, "ratios_to_hybrid": ratios}


def _measure_backbone(vit: torch.nn.Module, x: torch.Tensor, row: dict[str, Any], do_fwd: bool,
                      do_train: bool, args: argparse.Namespace, device: torch.device) -> None:
    """Fill ``row`` with the forward and/or training measurements of one configuration."""
    if do_fwd:
        vit.eval()
        with torch.no_grad(), autocast(device, args.amp):  # each counted call builds its masks
            row["fwd_gflops"], row["fwd_peak_mb"] = counted_run(
                lambda: (_clear_mask_cache(vit), vit(x)), device)
            row["fwd_s"] = time_call(lambda: vit(x), device, iters=args.iters, warmup=0)
        row["fwd_gmacs"] = row["fwd_gflops"] / 2
        _efficiencies(row, "fwd", args.peak_tflops)
    if do_train:
        vit.train()

        def step() -> None:
            with autocast(device, args.amp):
                loss = sum(o.float().mean() for o in vit(x))
            loss.backward()

        _allocate_grads(vit)
        row["train_gflops"], row["train_peak_mb"] = counted_run(step, device)
        row["train_s"] = time_call(step, device, iters=args.train_iters, warmup=0)
        _efficiencies(row, "train", args.peak_tflops)


def _efficiencies(row: dict, kind: str, peak_tflops: float | None) -> None:
    """Achieved FLOP/s of ``kind`` (fwd/train) over the probe and, on a known GPU, its data-sheet
    peak."""
    achieved = row[f"{kind}_gflops"] / row[f"{kind}_s"]
    row[f"{kind}_efficiency"] = achieved / row["probe_gflops_s"]
    if peak_tflops:
        row[f"{kind}_device_utilisation"] = achieved / (peak_tflops * 1e3)


def _ratios_to_hybrid(rows: list[dict]) -> list[dict]:
    out = []
    for r in rows:
        ref = next((h for h in rows
                    if h["layout"] == "hybrid" and h["image_size"] == r["image_size"]
                    and h.get("impl") == r.get("impl")), None)
        if ref is None:
            continue
        keys = [k for k in ("fwd_s", "fwd_gflops", "fwd_peak_mb", "train_s", "train_peak_mb",
                            "infer_s")
                if k in r and k in ref]
        out.append({"layout": r["layout"], "impl": r.get("impl"), "image_size": r["image_size"],
                    **{k: r[k] / ref[k] for k in keys}})
    return out


def _fmt_row(r: dict) -> str:
    name = r["layout"] if r.get("impl", "fused") == "fused" else f"{r['layout']}/{r['impl']}"
    parts = [f"{name:<23} {r['image_size']:>5}px"]
    if "oom" in r:
        parts.append(f"OUT OF MEMORY ({r['oom'][:80]})")
    if "fwd_s" in r:
        parts.append(f"fwd {r['fwd_s']:7.3f}s {r['fwd_gflops']:7.1f} GFLOP "
                     f"eff {r['fwd_efficiency']:5.1%} mem {r['fwd_peak_mb']:7.0f} MB")
    if "train_s" in r:
        parts.append(f"train {r['train_s']:7.3f}s eff {r['train_efficiency']:5.1%} "
                     f"mem {r['train_peak_mb']:7.0f} MB")
    parts.append(f"(probe {r['probe_gflops_s']:.1f} GFLOP/s)")
    return " | ".join(parts)


def bench_detector(args: argparse.Namespace, device: torch.device,
                   log: Callable[[str], None]) -> dict:
    """The paper's Table 3 columns for each layout: peak training memory, s/iter, s/img."""
    rows = []
    for layout in args.detector_layouts:
        try:
            row = _bench_detector_layout(args, layout, device, log)
        except RuntimeError as err:
            if not _is_oom(err):
                raise
            row = {"layout": layout, "image_size": args.detector_image_size,
                   "oom": str(err).splitlines()[0]}
            log(f"detector {layout}: OUT OF MEMORY")
        rows.append(row)
        _free(device)
    return {"size": args.size, "detector_set": args.detector_set, "rows": rows,
            "ratios_to_hybrid": _ratios_to_hybrid(rows)}


def _bench_detector_layout(args: argparse.Namespace, layout: str, device: torch.device,
                           log: Callable[[str], None]) -> dict:
    from .complexity import dummy_target
    from .model import build_detector

    size = args.detector_image_size
    det = DetectorConfig(num_classes=80, image_size=size)
    det = replace(det, **{k: type(getattr(det, k))(v)
                          for k, v in (kv.split("=", 1) for kv in args.detector_set)})
    cfg = ModelConfig(vit_config(args.size, attention=AttentionLayout(layout)), det)
    model = build_detector(cfg).to(device)
    out: dict[str, Any] = {"layout": layout, "image_size": size,
                           "probe_gflops_s": probe_gflops(device, args.amp, args.probe_size)}
    model.train()
    image = torch.rand(3, size, size, device=device)
    target = dummy_target(size, det.num_classes, device)

    def train_step() -> None:
        with autocast(device, args.amp):
            losses = model([image], [target])
        sum(l.float() for l in losses.values()).backward()  # losses summed in fp32 (AMP-safe)

    _allocate_grads(model)
    out["train_gflops"], out["train_peak_mb"] = counted_run(train_step, device)
    out["train_s"] = time_call(train_step, device, iters=args.train_iters, warmup=0)
    if device.type == "cuda":  # the paper's memory column: all the GPU held (weights, grads, step)
        out["train_max_allocated_gb"] = torch.cuda.max_memory_allocated(device) / 2**30
    # inference: a COCO-like 4:3 image, scaled to the long side and padded to the fixed square
    model.eval()
    thresh, model.roi_heads.score_thresh = model.roi_heads.score_thresh, 0.0  # full 100 dets
    photo = torch.rand(3, size * 3 // 4, size, device=device)
    with torch.no_grad(), autocast(device, args.amp):
        out["infer_gflops"], out["infer_peak_mb"] = counted_run(
            lambda: (_clear_mask_cache(model), model([photo])), device)
        out["infer_s"] = time_call(lambda: model([photo]), device, iters=args.iters, warmup=0)
    model.roi_heads.score_thresh = thresh
    out["infer_images_s"] = 1.0 / out["infer_s"]
    out["train_gmacs"], out["infer_gmacs"] = out["train_gflops"] / 2, out["infer_gflops"] / 2
    log(f"detector {layout} {size}px | train {out['train_s']:.3f}s/it "
        f"mem {out['train_peak_mb']:.0f} MB"
        f" | infer {out['infer_s']:.3f} s/img ({out['infer_gflops']:.0f} GFLOP)")
    return out


def bench_data(args: argparse.Namespace, log: Callable[[str], None]) -> dict:
    from .data import (
        CocoDetection,
        FashionMNISTNotFoundError,
        coco_split_paths,
        lsj_transform,
        measure_throughput,
        write_fashion_scenes,
        write_shape_scenes,
    )

    n = args.data_images
    with tempfile.TemporaryDirectory() as tmp:
        try:
            write_fashion_scenes(tmp, {"train": n}, image_size=args.data_source_size)
            source = "fashion-mnist scenes"
        except FashionMNISTNotFoundError:
            write_shape_scenes(tmp, n, image_size=args.data_source_size)
            source = "procedural shape scenes"
        image_dir, ann = coco_split_paths(tmp, "train")
        dataset = CocoDetection(image_dir, ann, transform=lsj_transform(args.detector_image_size))
        batch = 2
        ips = measure_throughput(dataset, num_workers=args.data_workers,
                                 batches=max(1, n // batch - 2), batch_size=batch, warmup=1)
    out = {"source": source, "source_size": args.data_source_size,
           "lsj_size": args.detector_image_size, "workers": args.data_workers, "images": n,
           "images_s": ips}
    log(f"data LSJ {args.detector_image_size}px from {source} ({args.data_source_size}px), "
        f"{args.data_workers} workers: {ips:.1f} img/s")
    return out


def run(args: argparse.Namespace) -> int:
    started = time.perf_counter()
    vit_config(args.size)  # an unknown size fails here, before minutes of measuring
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if args.probe_size is None:
        args.probe_size = 8192 if device.type == "cuda" else 2048
    if args.amp is None:
        args.amp = "bf16" if device.type == "cuda" else "off"
    if args.peak_tflops is None:
        args.peak_tflops = device_peak_tflops(device)
    args.train_sizes = args.train_sizes if args.train_sizes is not None else args.image_sizes
    log = lambda s: print(s, flush=True)
    env = provenance()
    log(f"{env['device']} | torch {env['packages']['torch']} | {torch.get_num_threads()} threads"
        f" | amp {args.amp} | load avg {os.getloadavg()[0]:.1f}")
    record: dict[str, Any] = {"command": "vitdet-bench " + " ".join(args.argv or sys.argv[1:]),
                              "env": env, "threads": torch.get_num_threads(), "amp": args.amp,
                              "load_avg_start": list(os.getloadavg()),
                              "device_peak_tflops": args.peak_tflops,
                              "flops_convention": "torch FlopCounterMode: multiply-add = 2 FLOPs; "
                                                  "*_gmacs = fvcore/paper convention "
                                                  "(= gflops / 2)",
                              "timing_note": "two counted calls of each configuration (FLOPs, "
                                             "then peak memory; forwards build their masks in "
                                             "both) are the warm-up; timed forwards reuse the "
                                             "attention masks as inference does, training "
                                             "steps rebuild them"}
    if "probe" in args.parts:
        record["probe_gflops_s"] = probe_gflops(device, args.amp, args.probe_size)
        log(f"matmul probe: {record['probe_gflops_s']:.1f} GFLOP/s")
    if "backbone" in args.parts:
        record["backbone"] = bench_backbone(args, device, log)
        for layout, fit in record["backbone"]["exponent_vs_tokens"].items():
            log(f"exponent vs tokens {layout}: "
                + ", ".join(f"{k} {v:.2f}" for k, v in fit.items()))
    if "detector" in args.parts:
        record["detector"] = bench_detector(args, device, log)
    if "data" in args.parts:
        record["data"] = bench_data(args, log)
    if device.type == "cuda":
        record["cuda_max_memory_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    record["load_avg_end"] = list(os.getloadavg())
    record["wall_s"] = time.perf_counter() - started
    out = Path(args.json) if args.json else DEFAULT_OUT / f"bench_{args.size}_{device.type}.json"
    write_json_atomic(out, record, indent=2)
    log(f"wrote {out} ({record['wall_s']:.0f} s)")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser("bench",
                              help="backbone/detector/data performance benchmark (issue 7)")
    p.add_argument("--parts", nargs="+", default=["probe", "backbone", "detector", "data"],
                   choices=["probe", "backbone", "detector", "data"])
    p.add_argument("--size", default="base", help="ViT size: tiny small base large mini")
    p.add_argument("--layouts", nargs="+",
                   default=["window", "hybrid", "global", "global_checkpoint"],
                   choices=[a.value for a in AttentionLayout])
    p.add_argument("--attention-impls", nargs="+", default=["fused"], choices=["fused", "naive"],
                   help="fused: ours; naive: attention materialised with plain ops "
                        "(detectron2-style), as a reference")
    p.add_argument("--naive-max-size", type=int, default=None,
                   help="skip naive rows above this input side (global naive at 1024 needs ~20 GB)")
    p.add_argument("--image-sizes", nargs="+", type=int, default=[256, 512, 1024],
                   help="backbone input sides (forward at all of them)")
    p.add_argument("--train-sizes", nargs="+", type=int, default=[512, 1024],
                   help="sides at which forward+backward is also measured (default 512 1024)")
    p.add_argument("--iters", type=int, default=1,
                   help="timed forward iterations (median), after the counted warm-up call")
    p.add_argument("--train-iters", type=int, default=1,
                   help="timed training steps (median), after the counted warm-up step")
    p.add_argument("--detector-image-size", type=int, default=1024)
    p.add_argument("--detector-layouts", nargs="+", default=["hybrid"],
                   choices=[a.value for a in AttentionLayout],
                   help="layouts of the full-detector rows (all four = the paper's Table 3)")
    p.add_argument("--detector-set", nargs="*", default=[], metavar="FIELD=VALUE",
                   help="DetectorConfig overrides, e.g. box_batch_size_per_image=64 "
                        "(default: the paper's)")
    p.add_argument("--data-images", type=int, default=24,
                   help="scenes written for the loading test")
    p.add_argument("--data-source-size", type=int, default=640, help="side of the written scenes")
    p.add_argument("--data-workers", type=int, default=2)
    p.add_argument("--probe-size", type=int, default=None,
                   help="side of the probe's square matmul (default 2048 on CPU, 8192 on CUDA)")
    p.add_argument("--amp", default=None, choices=["off", "bf16", "fp16"],
                   help="autocast dtype (default: bf16 on CUDA, off on CPU)")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="device bf16 peak for the utilisation columns "
                        "(default: data sheet by GPU name)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: all cores)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help=f"output file (default {DEFAULT_OUT}/bench_<size>_"
                   f"<device>.json; results/bench/ only when named here)")
    p.set_defaults(func=run, argv=[])
