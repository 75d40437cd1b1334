"""Does a variant speed up the ViT backbone here? ``compile``: ``torch.compile`` (inductor);
``bf16``: bf16 autocast (the paper's AMP; on CPUs with AVX512-BF16/AMX the matmuls run in bf16).
Plain fp32 eager vs the variant in one process, same weights, interleaved timing rounds; prints
the ratios (and the compile time), the outputs' largest difference, and the peak memory.

    OMP_NUM_THREADS=2 python benchmarks/variant_probe.py --variant compile --size base \
        --image-size 512 --train --json results/bench/compile_probe_base_512_hybrid_cpu.json
    OMP_NUM_THREADS=2 python benchmarks/variant_probe.py --variant bf16 --size base \
        --image-size 1024 --train --json results/bench/bf16_probe_base_1024_hybrid_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import torch

from vitdet_lib.config import AttentionLayout, vit_config
from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.model.vit import ViT
from vitdet_lib.profiling import time_call


class _Autocast(torch.nn.Module):
    """The same model run under bf16 autocast (outputs cast back to fp32)."""

    def __init__(self, model: torch.nn.Module, device: torch.device) -> None:
        super().__init__()
        self.model, self.device_type = model, device.type

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        with torch.autocast(self.device_type, dtype=torch.bfloat16):
            return [o.float() for o in self.model(x)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--layout", default="hybrid", choices=[a.value for a in AttentionLayout])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time forward+backward")
    parser.add_argument("--variant", default="compile", choices=["compile", "bf16"])
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = vit_config(args.size, attention=AttentionLayout(args.layout), drop_path_rate=0.0)
    model = ViT(cfg, img_size=args.image_size).to(device)
    if args.variant == "compile":
        compiled = torch.compile(model, mode=args.mode)
    else:
        compiled = _Autocast(model, device)
    x = torch.randn(1, 3, args.image_size, args.image_size, device=device)
    res: dict = {"variant": args.variant, "size": args.size, "image_size": args.image_size,
                 "layout": args.layout, "mode": args.mode if args.variant == "compile" else None}

    def fwd(m):
        with torch.no_grad():
            return m.eval()(x)

    def step(m):
        m.train()
        sum(o.mean() for o in m(x)).backward()

    t0 = time.perf_counter()
    outs = fwd(compiled)
    res["first_fwd_s"] = time.perf_counter() - t0
    ref = fwd(model)
    res["max_abs_diff"] = max((a.float() - b).abs().max().item() for a, b in zip(outs, ref))
    res["max_rel_diff"] = max(((a.float() - b).norm() / b.norm()).item() for a, b in zip(outs, ref))
    if args.variant == "bf16":  # (a dispatch-mode tracker would disturb the compiled graph)
        from vitdet_lib.profiling import peak_memory
        for tag, m in (("eager", model), ("variant", compiled)):
            res[f"fwd_peak_mb_{tag}"] = peak_memory(lambda m=m: fwd(m), device) / 2**20
            if args.train:
                res[f"train_peak_mb_{tag}"] = peak_memory(lambda m=m: step(m), device) / 2**20
    kinds = [("fwd", fwd)]
    if args.train:
        t0 = time.perf_counter()
        step(compiled)
        res["first_train_step_s"] = time.perf_counter() - t0
        kinds.append(("train", step))
    for kind, fn in kinds:
        eager, comp = [], []
        for _ in range(args.rounds):
            eager.append(time_call(lambda fn=fn: fn(model), device, iters=1, warmup=0))
            comp.append(time_call(lambda fn=fn: fn(compiled), device, iters=1, warmup=0))
        res[f"{kind}_eager_s"] = sorted(eager)[len(eager) // 2]
        res[f"{kind}_variant_s"] = sorted(comp)[len(comp) // 2]
        res[f"{kind}_variant_over_eager"] = res[f"{kind}_variant_s"] / res[f"{kind}_eager_s"]
        res[f"{kind}_all"] = {"eager": eager, "variant": comp}
    print(json.dumps({k: v for k, v in res.items() if not k.endswith("_all")}, indent=1))
    if args.json:
        write_json_atomic(Path(args.json), {
            "command": "python benchmarks/variant_probe.py " + " ".join(sys.argv[1:]),
            "env": provenance(),
            "threads": torch.get_num_threads(), "load_avg": list(os.getloadavg()), **res})
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
