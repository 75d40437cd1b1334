"""``vitdet-bench study run|report``: the study runner and its report.

    vitdet-bench study run --profile smoke [--only 'ft-*'] [--force]
    vitdet-bench study report --profile smoke
"""
from __future__ import annotations

import argparse
import sys

from vitdet_lib.config import ConfigError


def _run(args: argparse.Namespace) -> int:
    from .bench_commands import load_cli_profile  # --add-init, and every input checked first
    from .runner import run_study

    try:
        profile = load_cli_profile(args, validate=True)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if profile.launcher.kind.value == "slurm":  # each run a SLURM job (study/slurm.py)
        from .slurm import SlurmStudyExecutor

        summary = SlurmStudyExecutor(profile, force=args.force, echo=lambda line: print(
            line, flush=True)).run(args.only)
    else:
        summary = run_study(profile, only=args.only, force=args.force,
                            echo=lambda line: print(line, flush=True))
    return 1 if summary.count("failed") or summary.count("skipped") else 0


def _report(args: argparse.Namespace) -> int:
    from .bench_commands import load_cli_profile  # --add-init
    from .runner import run_report

    try:
        profile = load_cli_profile(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_report(profile, echo=lambda line: print(line, flush=True))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="run the study's notebooks (papermill) and "
                                  "render its tables and figures")
    sub = study.add_subparsers(dest="study_command", required=True)
    p = sub.add_parser("run", help="execute a profile's runs (finished runs are skipped)")
    p.add_argument("--profile", required=True, help="smoke | mini | paper | a profile .yaml")
    p.add_argument("--only", default=None, help="glob of run names (plus the runs they need)")
    p.add_argument("--force", action="store_true", help="re-execute finished runs too")
    p.set_defaults(func=_run)
    r = sub.add_parser("report", help="render the tables and figures from the profile's records")
    r.add_argument("--profile", required=True)
    r.set_defaults(func=_report)
    from . import bench_commands  # study plan; --add-init on run and report

    bench_commands.register(sub)
