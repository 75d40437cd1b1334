"""Backbone cost of the four attention layouts, printed as ratios to ``hybrid`` from one run.

Measures the ViT backbone alone (no adapter/FPN) on the current device: inference forward time
and peak memory, and (unless --no-train) forward+backward time and peak memory, the quantity
activation checkpointing reduces. Writes JSON with the environment beside it.

    python benchmarks/backbone_layouts.py --size base --image-size 1024 \
        --json results/bench/backbone_layouts_base_1024_cpu.json
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from vitdet_lib.config import AttentionLayout, vit_config
from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.model.vit import ViT
from vitdet_lib.profiling import count_flops, peak_memory, time_call


def measure_layout(size: str, image_size: int, layout: AttentionLayout, device: torch.device,
                   iters: int, train: bool) -> dict:
    cfg = vit_config(size, attention=layout, drop_path_rate=0.0)
    vit = ViT(cfg, img_size=image_size).to(device)
    x = torch.randn(1, 3, image_size, image_size, device=device)
    row: dict = {"layout": layout.value}
    vit.eval()
    with torch.no_grad():
        row["fwd_gflops"] = count_flops(lambda: vit(x)) / 1e9
        row["fwd_s"] = time_call(lambda: vit(x), device, iters=iters)
        row["fwd_peak_mb"] = peak_memory(lambda: vit(x), device) / 2**20
    if train:
        vit.train()

        def step() -> None:
            sum(o.float().mean() for o in vit(x)).backward()

        row["train_s"] = time_call(step, device, iters=iters)
        vit.zero_grad(set_to_none=False)
        row["train_peak_mb"] = peak_memory(step, device) / 2**20
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--iters", type=int, default=2)
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    rows = [measure_layout(args.size, args.image_size, layout, device, args.iters,
                           not args.no_train)
            for layout in AttentionLayout]
    ref = next(r for r in rows if r["layout"] == "hybrid")
    for r in rows:
        r["ratios_to_hybrid"] = {k: r[k] / ref[k] for k in r
                                 if k.endswith(("_s", "_mb", "_gflops"))}
    keys = [k for k in rows[0] if k not in ("layout", "ratios_to_hybrid")]
    print(f"ViT-{args.size} backbone at {args.image_size}x{args.image_size}, batch 1, "
          f"{provenance()['device']}, {torch.get_num_threads()} threads")
    header = "".join(f"{k:>16}" for k in keys)
    print(f"{'layout':<18}{header}   (ratio to hybrid)")
    for r in rows:
        cells = "".join(f"{r[k]:>9.2f} ({r['ratios_to_hybrid'][k]:.2f})" for k in keys)
        print(f"{r['layout']:<18}{cells}")
    if args.json:
        flags = " ".join(f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items()
                         if v not in (None, False))
        record = {"command": "python benchmarks/backbone_layouts.py " + flags, "size": args.size,
                  "image_size": args.image_size, "env": provenance(), "rows": rows}
        write_json_atomic(Path(args.json), record)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
