"""Training throughput (images/s) of each pre-training method for one encoder config, in one
run, and the epochs each method gets under a budget rule (``vitdet_lib.pretrain.budget``).

Every method uses its own params file (``params/pretrain_<method>.yaml``) with the same
``--set`` overrides applied to all (e.g. the encoder size, batch, AMP), so the numbers compare
the recipes' step costs on one encoder. Writes JSON with provenance.

    python benchmarks/pretrain_throughput.py --threads 2 --steps 10 \\
        --set encoder.embed_dim=128 --set train.amp=bf16 \\
        --budget-hours 8 --rule equal_compute --out results/bench/pretrain_throughput.json
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import torch

from vitdet_lib.io import provenance, write_json_atomic
from vitdet_lib.pretrain.budget import BudgetRule, split_budget
from vitdet_lib.pretrain.calibrate import measure_throughput
from vitdet_lib.pretrain.config import Method, load_pretrain_config
from vitdet_lib.pretrain.data import load_pretrain_images

ROOT = Path(__file__).resolve().parents[1]
FULL_TRAIN = 60_000


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=[m.value for m in Method],
                   choices=[m.value for m in Method])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override of every method's params (repeatable); one of a recipe "
                   "section (mae.*, beit.*, ...) applies to that method only")
    p.add_argument("--steps", type=int, default=5, help="timed optimizer steps per method")
    p.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--budget-hours", type=float, default=None,
                   help="total pre-training budget of all methods: print each one's epochs")
    p.add_argument("--rule", default=BudgetRule.EQUAL_COMPUTE.value,
                   choices=[r.value for r in BudgetRule])
    p.add_argument("--epoch-images", type=int, default=FULL_TRAIN,
                   help="images per pre-training epoch, for the budget")
    p.add_argument("--out", default=None, help="JSON output path")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    results = {}
    device = torch.device("cpu")
    for name in args.methods:
        # a recipe section's overrides go to its own method only (e.g. mocov3.mlp_dim=...)
        others = tuple(f"{m.value}." for m in Method if m.value != name)
        overrides = [item for item in args.set if not item.startswith(others)]
        cfg = load_pretrain_config(ROOT / "params" / f"pretrain_{name}.yaml", overrides)
        # just enough images for the steps: the step's cost does not depend on the set's size
        need = (args.warmup + args.steps) * cfg.train.batch_size
        data = dataclasses.replace(cfg.data, num_images=need)
        images, labels = load_pretrain_images(data, seed=cfg.train.seed)
        if cfg.train.device != "cpu" and torch.cuda.is_available():
            device = torch.device("cuda")
        results[name] = measure_throughput(cfg, images, labels, steps=args.steps,
                                           warmup=args.warmup)
        print(json.dumps({k: v for k, v in results[name].items() if k != "step_s_all"}),
              flush=True)
    record = {"overrides": args.set, "steps": args.steps, "warmup": args.warmup,
              "threads": torch.get_num_threads(), "methods": results,
              "command": " ".join(sys.argv), "provenance": provenance(device)}
    if args.budget_hours is not None:
        shares = split_budget({m: r["images_per_s"] for m, r in results.items()},
                              args.budget_hours * 3600, args.epoch_images, args.rule)
        record["budget"] = {"rule": args.rule, "hours": args.budget_hours,
                            "epoch_images": args.epoch_images,
                            "epochs": {m.value: s.epochs for m, s in shares.items()},
                            "hours_per_method": {m.value: s.seconds / 3600
                                                 for m, s in shares.items()}}
        print(json.dumps(record["budget"]), flush=True)
    if args.out:
        write_json_atomic(args.out, record)
    return 0


if __name__ == "__main__":
    sys.exit(main())
