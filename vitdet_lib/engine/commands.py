"""``vitdet-bench train`` and ``vitdet-bench eval``: thin wrappers over ``engine.run``.

    vitdet-bench train PARAMS [--set a.b=v ...] [--output-dir DIR] [--allow-changes]
    vitdet-bench eval PARAMS --checkpoint PATH [--split val|test] [--set a.b=v ...]

Multi-GPU: ``torchrun --nproc_per_node=N -m vitdet_lib.cli train PARAMS`` (same arguments).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import os
import shlex
import sys
from pathlib import Path

from vitdet_lib.experiment import ExperimentConfig, load_experiment


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("params", help="experiment params file (YAML, may use base:)")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a param, e.g. train.lr=8e-5 "
                        "(repeatable; values are YAML)")
    parser.add_argument("--output-dir", help="run directory (default: the params' output_dir, "
                        "else work_dirs/<params file name>)")


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the ``train`` and ``eval`` subcommands."""
    p = subparsers.add_parser("train", help="train (or resume) a detector from a params file",
                              description="Train, resuming from OUTPUT_DIR/last.pth if present.")
    _add_common(p)
    p.add_argument("--allow-changes", action="store_true",
                   help="resume with changed schedule/optimizer/data settings (recorded in "
                   "OUTPUT_DIR/changes.jsonl); without it such a resume is refused")
    p.set_defaults(func=_train)
    p = subparsers.add_parser("eval", help="COCO-evaluate a checkpoint on the validation set")
    _add_common(p)
    p.add_argument("--checkpoint", required=True, help="training checkpoint or state dict")
    p.add_argument("--split", choices=("val", "test"), default="val",
                   help="val (model selection) or the held-out test scenes (num_test > 0)")
    p.set_defaults(func=_eval)


def _config(args: argparse.Namespace) -> ExperimentConfig:
    overrides = list(args.overrides)
    if args.output_dir:
        overrides.append(f"output_dir={json.dumps(args.output_dir)}")
    return load_experiment(args.params, overrides)


def _setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        stream=sys.stderr)


def _is_main() -> bool:
    return os.environ.get("RANK", "0") == "0"  # torchrun sets RANK; one process prints


def _print_metrics(metrics: dict) -> None:
    if not _is_main():
        return
    for key, value in metrics.items():
        if isinstance(value, float) and "/" in key:
            print(f"{key:16s} {value:7.2f}" if math.isfinite(value) else f"{key:16s}     nan")


def _resume_command(args: argparse.Namespace, output_dir: str) -> str:
    """The command that resumes this run: the same params and overrides, its output dir."""
    words = ["vitdet-bench", "train", args.params]
    for item in args.overrides:
        words += ["--set", item]
    words += ["--output-dir", output_dir]
    if args.allow_changes:
        words.append("--allow-changes")
    return shlex.join(words)


def _train(args: argparse.Namespace) -> int:
    # errors (bad params, data or checkpoint; a diverged loss) are reported by cli.main
    from vitdet_lib.engine.run import train
    from vitdet_lib.errors import TrainingInterrupted

    _setup_logging()
    cfg = _config(args)
    try:
        summary = train(cfg, allow_changes=args.allow_changes)
    except TrainingInterrupted as err:  # the CLI prints it (exit 130), with how to resume
        raise err.with_resume_command(_resume_command(args, cfg.output_dir)) from None
    if _is_main():
        print(f"trained {summary['iterations']} iterations ({summary['epochs']:.2f} epochs), "
              f"{summary['time_per_iter_s']:.3f} s/iter")
    if summary["final_eval"]:
        _print_metrics(summary["final_eval"])
    return 0


def _eval(args: argparse.Namespace) -> int:
    from vitdet_lib.engine.run import evaluate

    _setup_logging()
    cfg = _config(args)
    metrics = evaluate(cfg, args.checkpoint, split=args.split)
    _print_metrics(metrics)
    if _is_main():
        out = eval_output_dir(cfg, args.checkpoint, args.split)
        print(f"wrote {out}/: coco_results.json (predictions), metrics.json, record.json")
    return 0


def eval_output_dir(cfg: ExperimentConfig, checkpoint: str, split: str = "val") -> Path:
    """Where ``engine.run.evaluate`` writes: ``<output_dir>/eval_<checkpoint stem>[_test]/``."""
    suffix = "_test" if split == "test" else ""
    return Path(cfg.output_dir or ".") / f"eval_{Path(checkpoint).stem}{suffix}"
