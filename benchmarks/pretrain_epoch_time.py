"""Wall time of one pre-training epoch per method on this machine (mini ViT, params files).

A full epoch (60k images) is not run: ``--steps`` optimizer steps are timed after ``--warmup``
untimed ones, and the median step time is extrapolated to ``steps_per_epoch`` of the whole
train split. BEiT's tokenizer training (done once, before pre-training) is timed separately on
a few steps and extrapolated to its configured length. Writes JSON with device, torch version,
git commit and the command.

    python benchmarks/pretrain_epoch_time.py --threads 1 \
        --out results/bench/pretrain_epoch_time_cpu.json
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from vitdet_lib.io import provenance
from vitdet_lib.pretrain.config import TokenizerConfig, load_pretrain_config
from vitdet_lib.pretrain.data import load_pretrain_images
from vitdet_lib.pretrain.engine import Pretrainer
from vitdet_lib.pretrain.tokenizer import train_tokenizer

ROOT = Path(__file__).resolve().parents[1]
FULL_TRAIN = 60_000


def time_method(method: str, args: argparse.Namespace, images: torch.Tensor,
                labels: torch.Tensor) -> dict:
    cfg = load_pretrain_config(ROOT / "params" / f"pretrain_{method}.yaml",
                               [f"train.device={args.device}", "train.log_every=1",
                                "train.save_epochs=[]", "beit.tokenizer.steps=5"]
                               if method == "beit" else
                               [f"train.device={args.device}", "train.log_every=1",
                                "train.save_epochs=[]"])
    times: list[float] = []

    def echo(rec: dict) -> None:
        if rec["type"] == "step":
            times.append(rec["time"])

    with tempfile.TemporaryDirectory() as tmp:
        trainer = Pretrainer(cfg, tmp, images=images, labels=labels, echo=echo)
        trainer.run(stop_after_steps=args.warmup + args.steps)
    timed = times[args.warmup:]
    step_s = statistics.median(timed)
    steps_per_epoch = FULL_TRAIN // cfg.train.batch_size
    out = {"batch_size": cfg.train.batch_size, "steps_timed": len(timed),
           "step_s_median": step_s, "step_s_all": timed,
           "images_per_s": cfg.train.batch_size / step_s,
           "steps_per_epoch_60k": steps_per_epoch,
           "epoch_s_extrapolated": step_s * steps_per_epoch}
    if method == "beit":
        tok: TokenizerConfig = cfg.beit.tokenizer
        n = args.tokenizer_steps
        start = time.perf_counter()
        train_tokenizer(images, TokenizerConfig(**{**tok.__dict__, "steps": n}),
                        img_size=cfg.encoder.vit().pretrain_img_size,
                        patch_size=cfg.encoder.vit().patch_size, crop_scale=cfg.beit.crop_scale)
        per_step = (time.perf_counter() - start) / n
        full = load_pretrain_config(ROOT / "params" / "pretrain_beit.yaml").beit.tokenizer.steps
        out["tokenizer_step_s"] = per_step
        out["tokenizer_s_extrapolated"] = per_step * full
        out["tokenizer_steps"] = full
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--methods", nargs="+", default=["supervised", "mocov3", "beit", "mae"])
    p.add_argument("--steps", type=int, default=4, help="timed optimizer steps per method")
    p.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    p.add_argument("--tokenizer-steps", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--num-images", type=int, default=4096,
                   help="training subset loaded (only the step time matters)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--out", default=str(ROOT / "results/bench/pretrain_epoch_time_cpu.json"))
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    from vitdet_lib.pretrain.config import PretrainDataConfig

    images, labels = load_pretrain_images(PretrainDataConfig(num_images=args.num_images))
    results = {}
    load_before = os.getloadavg()
    for m in args.methods:
        results[m] = time_method(m, args, images, labels)
        print(m, json.dumps({k: v for k, v in results[m].items() if k != "step_s_all"}),
              flush=True)
    record = {
        "what": "pre-training wall time per epoch of the 60k Fashion-MNIST train split, mini "
                "ViT, params/pretrain_<method>.yaml; extrapolated from the median of "
                f"{args.steps} timed optimizer steps (after {args.warmup} untimed)",
        "threads": args.threads, "results": results,
        # the machine is shared: 1-minute load averages show how contended the timing was
        "load_average_1m": {"before": load_before[0], "after": os.getloadavg()[0]},
        "cpu_count": os.cpu_count(),
        "provenance": provenance(torch.device(args.device)),
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(record, indent=1) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
