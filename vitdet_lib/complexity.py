"""Model complexity (Table 5, and the memory/time side of Table 3).

For a backbone size, input size and attention layout: parameters per part, forward FLOPs
(torch's counter: 2 FLOPs per multiply-add; the paper's fvcore numbers count 1, reported as
``gmacs``), activations (fvcore's definition), and on the current device the peak memory and
time of one training step and the time per inference image. A ResNet-101 FPN Mask R-CNN is the
paper's CNN reference.
"""
from __future__ import annotations

import argparse
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .config import AttentionLayout, DetectorConfig, ModelConfig, vit_config
from .io import provenance, write_json_atomic
from .model import build_detector, build_resnet_detector
from .profiling import count_activations, count_flops, peak_memory, time_call


@dataclass
class ComplexityReport:
    model: str
    image_size: int
    attention: str
    params: dict[str, int] = field(default_factory=dict)
    backbone_gflops: float = 0.0  # ViT (or ResNet) + adapter + FPN, torch convention
    detector_gflops: float = 0.0  # whole detector at inference, torch convention
    backbone_gmacs: float = 0.0  # fvcore / paper convention (multiply-adds)
    detector_gmacs: float = 0.0
    backbone_activations_m: float = 0.0
    train_peak_mem_mb: float | None = None
    train_step_s: float | None = None
    infer_s_per_img: float | None = None
    env: dict[str, Any] = field(default_factory=dict)


def count_params(module: nn.Module | None) -> int:
    return 0 if module is None else sum(p.numel() for p in module.parameters())


def param_breakdown(model: nn.Module) -> dict[str, int]:
    """Parameters of the backbone proper, its adapter + FPN (or neck), and the detector heads."""
    bb = model.backbone
    if hasattr(bb, "vit"):
        parts = {"backbone": count_params(bb.vit),
                 "adapter": count_params(getattr(bb, "adapter", None)),
                 "fpn_or_neck": count_params(getattr(bb, "fpn", None) or getattr(bb, "neck", None))}
    else:  # torchvision BackboneWithFPN
        parts = {"backbone": count_params(bb.body), "adapter": 0,
                 "fpn_or_neck": count_params(bb.fpn)}
    parts["rpn"] = count_params(model.rpn)
    parts["roi_heads"] = count_params(model.roi_heads)
    parts["total"] = count_params(model)
    return parts


def dummy_target(size: int, num_classes: int, device: torch.device) -> dict[str, torch.Tensor]:
    """A fixed training target for a ``size`` x ``size`` image, for measuring a training step.

    Returns:
        ``boxes`` [3, 4] (x0, y0, x1, y1 in pixels), ``labels`` [3] (in 1..num_classes) and
        ``masks`` [3, size, size] (uint8, each box filled), as torchvision's Mask R-CNN takes.
    """
    masks = torch.zeros(3, size, size, dtype=torch.uint8, device=device)
    boxes = torch.tensor([[0.1, 0.1, 0.4, 0.5], [0.3, 0.2, 0.9, 0.7], [0.6, 0.6, 0.8, 0.95]],
                         device=device) * size
    for m, b in zip(masks, boxes.long()):
        m[b[1]:b[3], b[0]:b[2]] = 1
    labels = torch.arange(3, device=device) % num_classes + 1
    return {"boxes": boxes, "labels": labels, "masks": masks}


def measure(model: nn.Module, name: str, image_size: int, attention: str, device: torch.device,
            timing: bool = True, iters: int = 2) -> ComplexityReport:
    """Measure one detector; ``timing=False`` skips the (slow on CPU) timed steps."""
    model = model.to(device)
    report = ComplexityReport(name, image_size, attention, params=param_breakdown(model),
                              env=provenance())
    image = torch.rand(3, image_size, image_size, device=device)

    model.eval()
    with torch.no_grad():
        batch = model.transform([image])[0].tensors
        report.backbone_gflops = count_flops(lambda: model.backbone(batch)) / 1e9
        report.backbone_activations_m = count_activations(lambda: model.backbone(batch)) / 1e6
        # every image keeps its 100 detections, so the mask head's share is fixed (random weights)
        thresh, model.roi_heads.score_thresh = model.roi_heads.score_thresh, 0.0
        report.detector_gflops = count_flops(lambda: model([image])) / 1e9
        if timing:
            report.infer_s_per_img = time_call(lambda: model([image]), device, iters=iters)
        model.roi_heads.score_thresh = thresh
    report.backbone_gmacs = report.backbone_gflops / 2
    report.detector_gmacs = report.detector_gflops / 2

    if timing:
        model.train()
        num_classes = model.roi_heads.box_predictor.cls_score.out_features - 1
        target = dummy_target(image_size, num_classes, device)

        def train_step() -> None:
            losses = model([image], [target])
            sum(losses.values()).backward()

        train_step()  # warm-up, and gradients exist before the measured step
        model.zero_grad(set_to_none=False)
        report.train_peak_mem_mb = peak_memory(train_step, device) / 2**20
        report.train_step_s = time_call(train_step, device, iters=iters, warmup=0)
    return report


def vit_detector(size: str, image_size: int, attention: str, num_classes: int = 80) -> nn.Module:
    cfg = ModelConfig(vit_config(size, attention=AttentionLayout(attention)),
                      DetectorConfig(num_classes=num_classes, image_size=image_size))
    return build_detector(cfg)


def _fmt(v: float | None, f: str = "{:.2f}") -> str:
    return "-" if v is None else f.format(v)


def format_table(reports: list[ComplexityReport]) -> str:
    """The reports as a markdown table (params in millions: backbone / adapter+FPN / heads /
    total; FLOPs in the torch convention, GMACs in the paper's)."""
    head = ("model", "input", "attention", "params M (bb/adapter+fpn/heads/total)",
            "bb GFLOPs", "det GFLOPs", "det GMACs", "bb acts M", "train mem MB", "train s/it",
            "infer s/img")
    rows = []
    for r in reports:
        p = r.params
        heads = p["rpn"] + p["roi_heads"]
        rows.append((r.model, str(r.image_size), r.attention,
                     (f"{p['backbone'] / 1e6:.1f}/{(p['adapter'] + p['fpn_or_neck']) / 1e6:.1f}/"
                      f"{heads / 1e6:.1f}/{p['total'] / 1e6:.2f}"),
                     f"{r.backbone_gflops:.0f}", f"{r.detector_gflops:.0f}",
                     f"{r.detector_gmacs:.0f}", f"{r.backbone_activations_m:.0f}",
                     _fmt(r.train_peak_mem_mb, "{:.0f}"), _fmt(r.train_step_s),
                     _fmt(r.infer_s_per_img)))
    widths = [max(len(x) for x in col) for col in zip(head, *rows)]

    def line(cells: tuple[str, ...] | list[str]) -> str:
        return "| " + " | ".join(c.ljust(w) for c, w in zip(cells, widths)) + " |"

    return "\n".join([line(head), line(["-" * w for w in widths])] + [line(r) for r in rows])


def run(args: argparse.Namespace) -> int:
    import sys

    args.argv = args.argv or sys.argv[1:]
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    reports = []
    for size in args.size:
        for attention in args.attention:
            model = vit_detector(size, args.image_size, attention, args.num_classes)
            reports.append(measure(model, f"ViT-{size}", args.image_size, attention, device,
                                   timing=not args.no_timing, iters=args.iters))
            del model
    if args.resnet:
        det = DetectorConfig(num_classes=args.num_classes, image_size=args.image_size)
        reports.append(measure(build_resnet_detector(det, 101), "ResNet-101", args.image_size, "-",
                               device, timing=not args.no_timing, iters=args.iters))
    print(format_table(reports))
    print("FLOPs: torch's counter (multiply-add = 2); GMACs = the paper's/fvcore's convention.")
    if args.json:
        out = Path(args.json)
        record = {"command": "vitdet-bench " + " ".join(args.argv),
                  "reports": [asdict(r) for r in reports]}
        write_json_atomic(out, record, indent=2)
        print(f"wrote {out}")
    return 0


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "complexity", help="parameters, FLOPs, activations, memory and time of a detector")
    p.add_argument("--size", nargs="+", default=["base"],
                   help="ViT sizes: tiny small base large mini")
    p.add_argument("--attention", nargs="+", default=["hybrid"],
                   choices=[a.value for a in AttentionLayout])
    p.add_argument("--image-size", type=int, default=1024)
    p.add_argument("--num-classes", type=int, default=80)
    p.add_argument("--resnet", action="store_true", help="also measure ResNet-101 FPN Mask R-CNN")
    p.add_argument("--no-timing", action="store_true",
                   help="counts only (no training/inference timing)")
    p.add_argument("--iters", type=int, default=2, help="timed iterations (median)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", default=None, help="write the reports to this JSON file")
    p.set_defaults(func=run, argv=[])
