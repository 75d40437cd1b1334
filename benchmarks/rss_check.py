"""Sanity check of ``LiveMemoryTracker`` against the process's resident memory.

In a fresh process: one ViT training step (the first, so gradients are allocated inside it)
while the OS counts the resident-set high-water mark, then the same step (gradients zeroed, set
to None) under the tracker. The RSS growth (peak RSS during the step - RSS before it) should be
close to the tracker's peak; it is larger by allocator slack and smaller when freed pages are
reused.

    python benchmarks/rss_check.py --size base --image-size 512 --layout hybrid
"""
from __future__ import annotations

import argparse
import json
import resource

import torch

from vitdet_lib.config import AttentionLayout, vit_config
from vitdet_lib.model.vit import ViT
from vitdet_lib.profiling import peak_memory


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: kB


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--layout", default="hybrid", choices=[a.value for a in AttentionLayout])
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    vit = ViT(vit_config(args.size, attention=AttentionLayout(args.layout), drop_path_rate=0.0),
              img_size=args.image_size).train()
    x = torch.randn(1, 3, args.image_size, args.image_size)

    def step() -> None:
        sum(o.mean() for o in vit(x)).backward()

    before, max_before = rss_mb(), max_rss_mb()
    step()
    max_after = max_rss_mb()
    vit.zero_grad(set_to_none=True)
    tracked = peak_memory(step, torch.device("cpu")) / 2**20
    out = {"args": vars(args), "rss_before_mb": before, "max_rss_before_mb": max_before,
           "max_rss_after_mb": max_after, "rss_growth_mb": max_after - before,
           "tracker_peak_mb": tracked, "ratio_rss_to_tracker": (max_after - before) / tracked,
           "valid": max_after > max_before}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
