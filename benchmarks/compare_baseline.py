"""Before/after: the ViT backbone of a git revision (``--rev``) against the working tree, in
one process, same threads, measurements interleaved so machine load hits both alike.

The old ``vit.py``/``pos.py``/``attention.py`` are read with ``git show`` into a throw-away
package; both models get the same weights. Reported: forward (no grad) and forward+backward
time, FLOP/s against a matmul probe run between them, and peak live-tensor memory.

    OMP_NUM_THREADS=1 python benchmarks/compare_baseline.py --size base --image-size 1024 \
        --layouts hybrid global --threads 1 --json results/bench/before_after_base_1024.json
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import torch

from vitdet_lib.config import AttentionLayout, vit_config
from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.profiling import count_flops, peak_memory, time_call

REPO = Path(__file__).resolve().parents[1]


def load_baseline(rev: str) -> type:
    """The ``ViT`` class of ``vitdet_lib/model`` at git revision ``rev``."""
    pkg = Path(tempfile.mkdtemp()) / f"vitdet_baseline_{rev}"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name in ("vit.py", "pos.py", "attention.py"):
        shown = subprocess.run(["git", "show", f"{rev}:vitdet_lib/model/{name}"], cwd=REPO,
                               capture_output=True, text=True, check=False)
        if shown.returncode:  # attention.py is newer than the first baseline
            continue
        src = shown.stdout
        src = src.replace("from ..config import", "from vitdet_lib.config import")
        (pkg / name).write_text(src)  # a throw-away module, read once: no atomic write needed
    sys.path.insert(0, str(pkg.parent))
    return importlib.import_module(f"vitdet_baseline_{rev}.vit").ViT


def clear_masks(vit: torch.nn.Module) -> None:
    """Drop a ViT's cached inference masks: the working tree's ViT has ``clear_mask_cache``; an
    older revision's, if it caches at all, keeps them in ``_mask_cache``."""
    if hasattr(vit, "clear_mask_cache"):
        vit.clear_mask_cache()
    elif hasattr(vit, "_mask_cache"):
        vit._mask_cache = None


def matmul_gflops_s(probe: torch.Tensor, device: torch.device) -> float:
    """This machine's matmul rate now (GFLOP/s of ``probe @ probe``, probe [n, n])."""
    n = probe.shape[0]
    return 2 * n**3 / time_call(lambda: probe @ probe, device, 3, 1) / 1e9


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rev", default="8b01939",
                        help="baseline revision (default: the last commit before issue 7)")
    parser.add_argument("--size", default="base")
    parser.add_argument("--image-size", type=int, default=1024)
    parser.add_argument("--layouts", nargs="+", default=["hybrid"],
                        choices=[a.value for a in AttentionLayout])
    parser.add_argument("--rounds", type=int, default=2, help="interleaved timing rounds (median)")
    parser.add_argument("--no-train", action="store_true")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    from vitdet_lib.model.vit import ViT as NewViT
    OldViT = load_baseline(args.rev)
    device = torch.device("cpu")
    x = torch.randn(1, 3, args.image_size, args.image_size)
    probe = torch.randn(2048, 2048)
    rows = []
    for layout in args.layouts:
        cfg = vit_config(args.size, attention=AttentionLayout(layout), drop_path_rate=0.0)
        new = NewViT(cfg, img_size=args.image_size)
        old = OldViT(cfg, img_size=args.image_size)
        old.load_state_dict(new.state_dict())
        models = {"before": old, "after": new}
        res: dict = {"layout": layout}
        for tag, m in models.items():
            m.eval()
            with torch.no_grad():
                res[f"{tag}_fwd_gflops"] = count_flops(lambda m=m: m(x)) / 1e9
                clear_masks(m)  # count the masks' memory, as a first inference does
                res[f"{tag}_fwd_peak_mb"] = peak_memory(lambda m=m: m(x), device) / 2**20
        times: dict = {k: [] for k in ("before_fwd_s", "after_fwd_s", "matmul_gflops_s")}
        for _ in range(args.rounds):
            for tag, m in models.items():
                with torch.no_grad():
                    times[f"{tag}_fwd_s"].append(
                        time_call(lambda m=m: m(x), device, iters=1, warmup=0))
                times["matmul_gflops_s"].append(matmul_gflops_s(probe, device))
        if not args.no_train:
            for tag, m in models.items():
                m.train()

                def step(m=m) -> None:
                    sum(o.mean() for o in m(x)).backward()

                res[f"{tag}_train_gflops"] = count_flops(step) / 1e9
                m.zero_grad(set_to_none=False)
                res[f"{tag}_train_peak_mb"] = peak_memory(step, device) / 2**20
                times[f"{tag}_train_s"] = []
            for _ in range(args.rounds):
                for tag, m in models.items():
                    times[f"{tag}_train_s"].append(
                        time_call(lambda m=m: sum(o.mean() for o in m(x)).backward(), device, 1, 0))
                times["matmul_gflops_s"].append(matmul_gflops_s(probe, device))
        for k, v in times.items():
            res[k] = sorted(v)[len(v) // 2]
            res[k + "_all"] = v
        peak = res["matmul_gflops_s"]
        for tag in models:
            res[f"{tag}_fwd_efficiency"] = res[f"{tag}_fwd_gflops"] / res[f"{tag}_fwd_s"] / peak
            if not args.no_train:
                res[f"{tag}_train_efficiency"] = (res[f"{tag}_train_gflops"]
                                                  / res[f"{tag}_train_s"] / peak)
        rows.append(res)
        print(json.dumps({k: (round(v, 3) if isinstance(v, float) else v) for k, v in res.items()
                          if not k.endswith("_all")}), flush=True)
        del models, new, old
    if args.json:
        record = {"command": "python benchmarks/compare_baseline.py " + " ".join(sys.argv[1:]),
                  "env": provenance(), "load_avg": list(os.getloadavg()), "rows": rows}
        print(f"wrote {write_json_atomic(args.json, record, indent=2)}")


if __name__ == "__main__":
    main()
