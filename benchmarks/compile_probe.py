"""Does ``torch.compile`` (inductor) speed up the ViT backbone here? Eager vs compiled in one
process, same weights, interleaved timing rounds; prints the ratios and the compile time.

    OMP_NUM_THREADS=2 python benchmarks/compile_probe.py --size base --image-size 512 --layout hybrid \
        --json results/bench/compile_probe_base_512_cpu.json
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
from vitdet_lib.model.vit import ViT
from vitdet_lib.profiling import environment, time_call


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", default="base")
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--layout", default="hybrid", choices=[a.value for a in AttentionLayout])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--train", action="store_true", help="also time forward+backward")
    parser.add_argument("--mode", default="default", help="torch.compile mode")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    cfg = vit_config(args.size, attention=AttentionLayout(args.layout), drop_path_rate=0.0)
    model = ViT(cfg, img_size=args.image_size).to(device)
    compiled = torch.compile(model, mode=args.mode)
    x = torch.randn(1, 3, args.image_size, args.image_size, device=device)
    res: dict = {"size": args.size, "image_size": args.image_size, "layout": args.layout, "mode": args.mode}

    def fwd(m):  # noqa: ANN001, ANN202
        with torch.no_grad():
            return m.eval()(x)

    def step(m):  # noqa: ANN001, ANN202
        m.train()
        sum(o.mean() for o in m(x)).backward()

    t0 = time.perf_counter()
    outs = fwd(compiled)
    res["compile_fwd_s"] = time.perf_counter() - t0
    ref = fwd(model)
    res["max_abs_diff"] = max((a - b).abs().max().item() for a, b in zip(outs, ref))
    kinds = [("fwd", fwd)]
    if args.train:
        t0 = time.perf_counter()
        step(compiled)
        res["compile_train_s"] = time.perf_counter() - t0
        kinds.append(("train", step))
    for kind, fn in kinds:
        eager, comp = [], []
        for _ in range(args.rounds):
            eager.append(time_call(lambda: fn(model), device, iters=1, warmup=0))
            comp.append(time_call(lambda: fn(compiled), device, iters=1, warmup=0))
        res[f"{kind}_eager_s"], res[f"{kind}_compiled_s"] = sorted(eager)[len(eager) // 2], sorted(comp)[len(comp) // 2]
        res[f"{kind}_compiled_over_eager"] = res[f"{kind}_compiled_s"] / res[f"{kind}_eager_s"]
        res[f"{kind}_all"] = {"eager": eager, "compiled": comp}
    print(json.dumps({k: v for k, v in res.items() if not k.endswith("_all")}, indent=1))
    if args.json:
        out = Path(args.json)
        out.parent.mkdir(parents=True, exist_ok=True)
        rec = {"command": "python benchmarks/compile_probe.py " + " ".join(sys.argv[1:]), "env": environment(),
               "threads": torch.get_num_threads(), "load_avg": list(os.getloadavg()), **res}
        tmp = out.with_suffix(".tmp")
        tmp.write_text(json.dumps(rec, indent=2))
        tmp.replace(out)
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
