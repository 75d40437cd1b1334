"""``vitdet-bench pretrain`` and ``vitdet-bench pretrain-eval``.

    vitdet-bench pretrain --method mae --epochs 2 --out work_dirs/pretrain/mae \\
        [--params params/pretrain_mae.yaml] [--set data.num_images=10000 ...] [--threads 1]
    torchrun --nproc_per_node=2 -m vitdet_lib.cli pretrain --method mae ...   (DDP; gloo on CPU)
    vitdet-bench pretrain-eval --checkpoint work_dirs/pretrain/mae/last.pth [--figure mae.png]
    vitdet-bench pretrain-eval --method mae --random-init

``pretrain`` resumes from ``<out>/last.pth`` when present and evaluates the encoder at the end
(``<out>/eval.json``: k-NN and linear probe, trained vs a random-init encoder of the same
recipe; MAE also writes ``<out>/mae_reconstruction.png``).
"""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch

from ..config import ConfigError
from ..io import write_json_atomic
from .config import Method, PretrainConfig, load_pretrain_config

PARAMS_DIR = Path(__file__).resolve().parents[2] / "params"


def default_params(method: str) -> Path:
    """``params/pretrain_<method>.yaml`` of the working directory, else of the repository."""
    local = Path("params") / f"pretrain_{method}.yaml"
    return local if local.is_file() else PARAMS_DIR / f"pretrain_{method}.yaml"


def _config(args: argparse.Namespace) -> PretrainConfig:
    overrides = list(args.set or [])
    if getattr(args, "epochs", None) is not None:
        overrides.append(f"train.epochs={args.epochs}")
    path = Path(args.params) if args.params else default_params(args.method)
    cfg = load_pretrain_config(path, overrides)
    if cfg.method.value != args.method:
        raise ConfigError(f"{path}: method={cfg.method.value!r} but --method {args.method}")
    return cfg


def _echo(record: dict[str, Any]) -> None:
    if record.get("type") == "start":
        record = {k: v for k, v in record.items() if k != "provenance"}
    print(json.dumps({k: round(v, 5) if isinstance(v, float) else v for k, v in record.items()}),
          flush=True)


def run_eval(method: Any, cfg: PretrainConfig, *, random_baseline: bool, figure: Path | None
             ) -> dict[str, Any]:
    """Frozen-feature evaluation (``evaluate.evaluate_method``) plus MAE's figure, timed."""
    from .data import load_eval_images
    from .evaluate import evaluate_method, mae_reconstruction_figure

    start = time.perf_counter()
    result = evaluate_method(method, cfg, random_baseline=random_baseline)
    if cfg.method == Method.MAE and figure is not None:
        images, _ = load_eval_images("test", 8, cfg.data.root)
        mae_reconstruction_figure(method.net, images, figure, pixel_mean=cfg.data.pixel_mean,
                                  pixel_std=cfg.data.pixel_std,
                                  title=f"MAE, mask ratio {cfg.mae.mask_ratio} (test images)")
        result["figure"] = str(figure)
    result["eval_wall_s"] = time.perf_counter() - start
    return result


def cmd_pretrain(args: argparse.Namespace) -> int:
    from ..engine.distributed import init_distributed, shutdown
    from .engine import Pretrainer

    if args.threads:
        torch.set_num_threads(args.threads)
    cfg = _config(args)
    out = Path(args.out)
    info = init_distributed(cfg.train.device)
    try:
        trainer = Pretrainer(cfg, out, info=info, echo=_echo)
        start = time.perf_counter()
        status = trainer.run(stop_after_steps=args.stop_after_steps)
        status["train_wall_s"] = time.perf_counter() - start
        if info.is_main:
            print(json.dumps(status), flush=True)
        if info.is_main and status["status"] == "finished" and not args.no_eval:
            result = run_eval(trainer.method, cfg, random_baseline=True,
                              figure=out / "mae_reconstruction.png")
            write_json_atomic(out / "eval.json", result)
            print(json.dumps(result, indent=1), flush=True)
    finally:
        shutdown()
    return 0


def cmd_pretrain_eval(args: argparse.Namespace) -> int:
    from .evaluate import load_pretrained

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        method = load_pretrained(args.checkpoint)
        cfg = method.cfg
        if args.set:
            raise ConfigError("--set applies to --random-init only; "
                              "a checkpoint carries its config")
    else:
        if not (args.method and args.random_init):
            raise ConfigError("give --checkpoint, or --method with --random-init")
        cfg = _config(args)
        torch.manual_seed(cfg.train.seed)
        from .methods import build_method
        method = build_method(cfg)
    out = Path(args.out) if args.out else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    figure = Path(args.figure) if args.figure else None
    result = run_eval(method, cfg, random_baseline=False, figure=figure)
    result["source"] = args.checkpoint or "random-init"
    if out is not None:
        write_json_atomic(out / "eval.json", result)
    print(json.dumps(result, indent=1), flush=True)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    methods = [m.value for m in Method]
    p = subparsers.add_parser("pretrain", help="pre-train a ViT on Fashion-MNIST "
                              "(supervised, MoCo v3, BEiT or MAE), official checkpoint layouts")
    p.add_argument("--method", required=True, choices=methods)
    p.add_argument("--epochs", type=float, default=None, help="overrides train.epochs")
    p.add_argument("--out", required=True, help="output directory (resumes from its last.pth)")
    p.add_argument("--params", default=None,
                   help="params file (default params/pretrain_<method>.yaml)")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", help="config override")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    p.add_argument("--stop-after-steps", type=int, default=None,
                   help="save last.pth and stop after this many optimizer steps (resumable)")
    p.add_argument("--no-eval", action="store_true", help="skip the frozen-feature evaluation")
    p.set_defaults(func=cmd_pretrain)

    e = subparsers.add_parser("pretrain-eval", help="k-NN / linear probe of a pre-trained "
                              "(or random-init) encoder on Fashion-MNIST")
    e.add_argument("--checkpoint", default=None, help="one of our pre-training checkpoints")
    e.add_argument("--method", choices=methods, default=None, help="with --random-init")
    e.add_argument("--random-init", action="store_true", help="evaluate a fresh encoder")
    e.add_argument("--params", default=None)
    e.add_argument("--set", action="append", metavar="KEY=VALUE")
    e.add_argument("--out", default=None, help="directory for eval.json")
    e.add_argument("--figure", default=None, help="MAE: reconstruction PNG path")
    e.add_argument("--threads", type=int, default=0)
    e.set_defaults(func=cmd_pretrain_eval)
