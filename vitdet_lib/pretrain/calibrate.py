"""Short calibration runs before a study: each method's training throughput, and a per-method
learning-rate check (the loss drop over a few steps at a few lrs).

Both drive the real training loop (``engine.Pretrainer``) for a handful of optimizer steps in
a temporary directory, so what they measure is the step a study will run (augmentation,
accumulation, AMP, clipping included).

    vitdet-bench pretrain-lr-check --method mae --lrs 3e-4 1e-3 3e-3 --steps 60 \\
        [--params P] [--set data.num_images=4096 ...] --out results/pretrain/lr_check_mae.json

A short check favours large learning rates (a fast early drop may end in a worse optimum), so it
screens out lrs that diverge or barely move; it does not replace a full-length comparison.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..io import provenance, write_json_atomic
from .config import Method, PretrainConfig, load_pretrain_config

_TOKENIZER_FILE = "tokenizer.pth"


def _short_schedule(cfg: PretrainConfig, steps: int, num_images: int, lr: float | None = None,
                    warmup_steps: int = 0) -> PretrainConfig:
    """``cfg`` with a schedule whose cosine barely decays over ``steps`` steps (the lr stays
    near its peak after ``warmup_steps``) and no epoch checkpoints."""
    per_epoch = max(num_images // cfg.train.batch_size, 1)
    epochs = 100.0 * max(steps, 1) / per_epoch  # 1% of the schedule: lr >= 99.9% of the peak
    train = dataclasses.replace(cfg.train, epochs=epochs, warmup_epochs=warmup_steps / per_epoch,
                                save_epochs=(), checkpoint_every=None, log_every=1,
                                lr=cfg.train.lr if lr is None else lr)
    return dataclasses.replace(cfg, train=train)


def _run(cfg: PretrainConfig, out: Path, images: torch.Tensor, labels: torch.Tensor,
         steps: int) -> tuple[list[dict[str, Any]], str | None]:
    """Step records of ``steps`` optimizer steps, and the error that stopped them (or None)."""
    from ..engine.trainer import NonFiniteLossError  # the loop's error for a NaN/inf loss
    from .engine import Pretrainer

    records: list[dict[str, Any]] = []

    def echo(record: dict[str, Any]) -> None:
        if record.get("type") == "step":
            records.append(record)

    try:
        Pretrainer(cfg, out, images=images, labels=labels, echo=echo).run(stop_after_steps=steps)
    except NonFiniteLossError as err:
        return records, str(err)
    return records, None


def measure_throughput(cfg: PretrainConfig, images: torch.Tensor, labels: torch.Tensor, *,
                       steps: int = 5, warmup: int = 2) -> dict[str, Any]:
    """Images per second of ``cfg``'s training step (median of ``steps`` timed steps after
    ``warmup`` untimed ones). BEiT's tokenizer is trained for a few steps only: its quality
    does not change the step's cost.

    Returns:
        ``{"method", "batch_size", "step_s_median", "step_s_all", "images_per_s"}``.
    """
    if cfg.method == Method.BEIT and cfg.beit.tokenizer.path is None:
        tok = dataclasses.replace(cfg.beit.tokenizer, steps=min(cfg.beit.tokenizer.steps, 5))
        cfg = dataclasses.replace(cfg, beit=dataclasses.replace(cfg.beit, tokenizer=tok))
    cfg = _short_schedule(cfg, warmup + steps, len(images))
    with tempfile.TemporaryDirectory() as tmp:
        records, error = _run(cfg, Path(tmp), images, labels, warmup + steps)
    if error is not None:
        raise RuntimeError(f"{cfg.method.value}: {error}")
    timed = [r["time"] for r in records[warmup:]]
    step_s = statistics.median(timed)
    return {"method": cfg.method.value, "batch_size": cfg.train.batch_size,
            "step_s_median": step_s, "step_s_all": timed,
            "images_per_s": cfg.train.batch_size / step_s}


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else math.nan


def best_lr(runs: list[dict[str, Any]]) -> float | None:
    """The lr of the run with the lowest final loss among those that did not diverge."""
    ok = [r for r in runs if not r["diverged"]]
    return min(ok, key=lambda r: r["loss_last"])["lr"] if ok else None


def lr_check(cfg: PretrainConfig, lrs: list[float], images: torch.Tensor, labels: torch.Tensor,
             *, steps: int = 50, window: int = 5, warmup_steps: int | None = None
             ) -> dict[str, Any]:
    """Run ``cfg``'s method for ``steps`` optimizer steps at each lr, from the same initial
    weights and data order (same seed), and record how far the loss falls.

    Args:
        cfg: the method's config (its lr is replaced by each of ``lrs``).
        lrs: peak learning rates to try.
        images, labels: the training set (uint8 [N, 28, 28], int64 [N]).
        steps: optimizer steps per lr.
        window: steps averaged at each end: ``drop = mean(first window) - mean(last window)``.
        warmup_steps: linear warmup (default ``steps // 5``), then the lr stays near its peak.

    Returns:
        ``{"method", "steps", "window", "runs": [{"lr", "loss_first", "loss_last", "drop",
        "relative_drop", "diverged", "losses"}], "best_lr"}``; ``best_lr`` has the lowest final
        loss (``loss_last``) among the runs that did not diverge (None if all did). Every run
        starts from the same weights and batches, so the final losses compare directly; the
        drop does not, since a larger lr lowers the loss already within the first window.
    """
    if steps < 2 * window:
        raise ConfigError(f"lr_check: steps={steps} must be at least 2 x window={window}")
    warmup = steps // 5 if warmup_steps is None else warmup_steps
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory() as tmp:
        tokenizer: str | None = cfg.beit.tokenizer.path
        for i, lr in enumerate(lrs):
            run_cfg = _short_schedule(cfg, steps, len(images), lr=lr, warmup_steps=warmup)
            if cfg.method == Method.BEIT and tokenizer is not None:  # one tokenizer for all lrs
                beit = dataclasses.replace(run_cfg.beit, tokenizer=dataclasses.replace(
                    run_cfg.beit.tokenizer, path=tokenizer))
                run_cfg = dataclasses.replace(run_cfg, beit=beit)
            out = Path(tmp) / f"lr{i}"
            start = time.perf_counter()
            records, error = _run(run_cfg, out, images, labels, steps)
            if cfg.method == Method.BEIT and tokenizer is None:
                tokenizer = str(out / _TOKENIZER_FILE)
            losses = [float(r["loss"]) for r in records]
            first, last = _mean(losses[:window]), _mean(losses[-window:])
            diverged = error is not None or len(losses) < steps or not math.isfinite(last)
            relative = (first - last) / abs(first) if first else math.nan
            runs.append({"lr": lr, "loss_first": first, "loss_last": last, "drop": first - last,
                         "relative_drop": relative, "diverged": diverged, "error": error,
                         "losses": losses, "wall_s": time.perf_counter() - start})
    best = best_lr(runs)
    return {"method": cfg.method.value, "steps": steps, "window": window,
            "warmup_steps": warmup, "num_images": len(images),
            "batch_size": cfg.train.batch_size, "runs": runs, "best_lr": best}


# ----------------------------------------------------------------------------- CLI


def _cmd_lr_check(args: argparse.Namespace) -> int:
    from .commands import default_params
    from .data import load_pretrain_images

    if args.threads:
        torch.set_num_threads(args.threads)
    path = Path(args.params) if args.params else default_params(args.method)
    cfg = load_pretrain_config(path, list(args.set or []))
    if cfg.method.value != args.method:
        raise ConfigError(f"{path}: method={cfg.method.value!r} but --method {args.method}")
    images, labels = load_pretrain_images(cfg.data, seed=cfg.train.seed)
    result = lr_check(cfg, list(args.lrs), images, labels, steps=args.steps, window=args.window)
    cuda = cfg.train.device != "cpu" and torch.cuda.is_available()
    result.update(params=str(path), overrides=list(args.set or []),
                  provenance=provenance(torch.device("cuda" if cuda else "cpu")))
    for run in result["runs"]:
        print(f"{args.method} lr {run['lr']:.2e}: loss {run['loss_first']:.4f} -> "
              f"{run['loss_last']:.4f} (drop {run['drop']:+.4f})"
              f"{'  DIVERGED' if run['diverged'] else ''}", flush=True)
    print(f"best lr over {args.steps} steps: {result['best_lr']}")
    if args.out:
        write_json_atomic(args.out, result)
        print(json.dumps({"written": args.out}))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``pretrain-lr-check``."""
    p = subparsers.add_parser("pretrain-lr-check", help="loss drop of a pre-training method "
                              "over a few steps at each of a few learning rates")
    p.add_argument("--method", required=True, choices=[m.value for m in Method])
    p.add_argument("--lrs", required=True, nargs="+", type=float, help="peak lrs to try")
    p.add_argument("--steps", type=int, default=50, help="optimizer steps per lr")
    p.add_argument("--window", type=int, default=5, help="steps averaged at each end")
    p.add_argument("--params", default=None, help="default params/pretrain_<method>.yaml")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--out", default=None, help="JSON record of every run")
    p.set_defaults(func=_cmd_lr_check)
