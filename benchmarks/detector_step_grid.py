"""Training-step cost of the miniature detector over candidate sizes, in one run: what the
`cpu` study profile can afford per fine-tuning run on this machine.

Each candidate is the mini ViT (patch 8, depth 8, hybrid attention, pre-training grid 8x8 ->
window 8) at one width and detection image size, a real Mask R-CNN training pass (forward +
backward on random images with three boxes each, as ``study plan`` times it) at batch
``--batch``, with COCO's RPN/RoI sampling or one sized for ~10-object scenes (``SMALL_HEADS``).
Prints seconds per step and images per second, and the ratio to the first row.

    python benchmarks/detector_step_grid.py --threads 2 --amp bf16 \\
        --widths 96 128 --image-sizes 96 128 --json results/bench/detector_step_grid_cpu.json
"""
from __future__ import annotations

import argparse
import dataclasses
import sys
import time

import torch

from vitdet_lib.config import DetectorConfig, ModelConfig, vit_config
from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.study.cost import measure_step

# RPN / RoI sampling sized for scenes of ~10 objects instead of COCO's defaults (2000
# proposals, 512 RoIs per image): at these image sizes the heads, not the ViT, set the cost
SMALL_HEADS = {"rpn_pre_nms_top_n_train": 300, "rpn_post_nms_top_n_train": 150,
               "rpn_pre_nms_top_n_test": 150, "rpn_post_nms_top_n_test": 100,
               "box_batch_size_per_image": 128, "detections_per_img": 30}


def candidate(width: int, image_size: int, heads: int, num_classes: int,
              small_heads: bool) -> ModelConfig:
    vit = dataclasses.replace(vit_config("mini"), embed_dim=width, num_heads=heads)
    det = DetectorConfig(num_classes=num_classes, image_size=image_size,
                         fpn_channels=min(128, width),
                         anchor_sizes=tuple(int(s * image_size / 256) or 1
                                            for s in (8, 16, 32, 64, 128)),
                         **(SMALL_HEADS if small_heads else {}))
    return ModelConfig(vit, det)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--widths", type=int, nargs="+", default=[96, 128])
    p.add_argument("--head-dim", type=int, default=32, help="heads = width / head-dim")
    p.add_argument("--image-sizes", type=int, nargs="+", default=[96, 128])
    p.add_argument("--batch", type=int, default=8, help="images per training pass")
    p.add_argument("--amp", default="bf16", choices=["off", "bf16"])
    p.add_argument("--steps", type=int, default=3, help="timed passes (after one warm-up)")
    p.add_argument("--threads", type=int, default=0)
    p.add_argument("--heads", nargs="+", default=["coco", "small"], choices=["coco", "small"],
                   help="RPN/RoI sampling: COCO's defaults, or SMALL_HEADS")
    p.add_argument("--json", default=None, help="write the rows with provenance here")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device("cpu")
    rows = []
    start = time.perf_counter()
    for heads, width, size in ((h, w, s) for h in args.heads for w in args.widths
                               for s in args.image_sizes):
        cfg = candidate(width, size, max(1, width // args.head_dim), num_classes=10,
                        small_heads=heads == "small")
        # no cache: a benchmark measures now
        t = measure_step(cfg, size, args.batch, args.amp, device, steps=args.steps,
                         cache_dir=f"/tmp/detector_step_grid_{time.time_ns()}")
        rows.append({"heads": heads, "width": width, "image_size": size, "batch": args.batch,
                     "amp": t.amp, "step_s": t.seconds,
                     "images_per_s": args.batch / t.seconds, "params": t.params})
        base = rows[0]["step_s"]
        print(f"{heads:5s} heads  width {width:4d}  image {size:4d}  {t.seconds:6.3f} s/step  "
              f"{args.batch / t.seconds:6.1f} img/s  x{t.seconds / base:4.2f}", flush=True)
    if args.json:
        write_json_atomic(args.json, {
            "command": "python benchmarks/detector_step_grid.py " + " ".join(
                sys.argv[1:] if argv is None else argv),
            "rows": rows, "wall_s": time.perf_counter() - start,
            "provenance": provenance(device)})
        print(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
