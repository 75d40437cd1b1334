"""``vitdet-bench study plan`` and the ``--add-init`` options of ``study run|report``.

    vitdet-bench study plan --profile paper [--add-init mine=/ckpt/{size}/mine.pth:auto] [--full]
    vitdet-bench study run --profile smoke --add-init mine=/ckpt/mine.pth:auto
    vitdet-bench study report --profile smoke --add-init mine=/ckpt/mine.pth:auto

``study run`` validates every input of the runs it would execute first (``plan`` without the
timing) and refuses with the full list of problems, exit code 2, before anything starts.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from vitdet_lib.config import ConfigError


def _add_init_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--add-init", action="append", default=[], metavar="NAME=PATH[:LAYOUT]",
                   help="benchmark a checkpoint file as one more init (repeatable); LAYOUT: "
                        "auto (default), mae, timm, mocov3, beit, vitdet; PATH may use {size}")
    p.add_argument("--add-init-all", action="store_true",
                   help="add the new inits to every comparison with an init axis, not only "
                        "Table 1 / Figure 2 (and the tuning sweep)")


def load_cli_profile(args: argparse.Namespace, *, validate: bool = False):
    """The profile of ``--profile`` with ``--add-init`` applied; with ``validate``, every input
    of the selected runs checked.

    Raises:
        ConfigError: a bad profile or spec, or (``validate``) the list of all problems found.
    """
    from .add_init import load_benchmark_profile
    from .plan import plan

    profile = load_benchmark_profile(args.profile, getattr(args, "add_init", []),
                                     getattr(args, "add_init_all", False))
    if validate:
        checked = plan(profile, measure=False, only=getattr(args, "only", None),
                       stage=getattr(args, "stage", None),
                       results_dir=getattr(args, "results_dir", None))
        if not checked.ok:
            listing = "\n  - ".join(checked.problems)
            raise ConfigError(f"profile {profile.name}: {len(checked.problems)} problem(s), "
                              f"nothing started:\n  - {listing}")
    return profile


def _plan(args: argparse.Namespace) -> int:
    from .plan import format_plan, plan, write_plan

    try:
        profile = load_cli_profile(args)
        out = Path(args.out or f"work_dirs/plan/{profile.name}")
        result = plan(profile, full=args.full, measure=not args.no_measure, only=args.only,
                      stage=args.stage, out_dir=out, echo=lambda line: print(line, flush=True))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    print(format_plan(result))
    try:
        json_path, csv_path = write_plan(result, out)
        print(f"wrote {json_path} and {csv_path}")
    except OSError as err:  # already listed among the problems when the folder is unusable
        print(f"error: cannot write the plan into {out}: {err}", file=sys.stderr)
    return 0 if result.ok else 2


def register(study_sub: argparse._SubParsersAction) -> None:
    """Add ``study plan``, and ``--add-init`` to the ``run`` and ``report`` parsers."""
    p = study_sub.add_parser("plan", help="the run matrix, every input checked, and its cost "
                             "in device-hours (exit 2 listing all problems)")
    p.add_argument("--profile", required=True, help="smoke | mini | paper | a profile .yaml")
    p.add_argument("--only", default=None, help="glob of run names (plus the runs they need)")
    p.add_argument("--stage", default=None, help="only the runs of this stage (as study run)")
    p.add_argument("--full", action="store_true",
                   help="check every referenced image file (default: a sample per split)")
    p.add_argument("--no-measure", action="store_true",
                   help="skip timing training steps here (no device-hour estimates)")
    p.add_argument("--out", default=None, help="folder for plan.json and plan.csv "
                   "(default work_dirs/plan/<profile>)")
    _add_init_args(p)
    p.set_defaults(func=_plan)
    for name in ("run", "report"):
        if name in study_sub.choices:
            _add_init_args(study_sub.choices[name])
