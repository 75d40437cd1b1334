"""``vitdet-bench study run|report``: the study runner and its report.

    vitdet-bench study run --profile cpu --stage tune      # one stage of a long study
    vitdet-bench study run --profile smoke [--only 'ft-*'] [--force] [--results-dir DIR]
    vitdet-bench study report --profile smoke [--results-dir DIR]
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
    try:
        if profile.launcher.kind.value == "slurm":  # each run a SLURM job (study/slurm.py)
            from .slurm import SlurmStudyExecutor

            summary = SlurmStudyExecutor(profile, force=args.force, echo=lambda line: print(
                line, flush=True), results_dir=args.results_dir).run(args.only, args.stage)
        else:
            summary = run_study(profile, only=args.only, stage=args.stage, force=args.force,
                                results_dir=args.results_dir,
                                echo=lambda line: print(line, flush=True))
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 1 if summary.count("failed") or summary.count("skipped") else 0


def _report(args: argparse.Namespace) -> int:
    from .bench_commands import load_cli_profile  # --add-init
    from .runner import run_report

    try:
        profile = load_cli_profile(args)
    except ConfigError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    run_report(profile, results_dir=args.results_dir, echo=lambda line: print(line, flush=True),
               add_inits=args.add_init, add_init_all=args.add_init_all)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    study = subparsers.add_parser("study", help="run the study's notebooks (papermill) and "
                                  "render its tables and figures")
    sub = study.add_subparsers(dest="study_command", required=True)
    p = sub.add_parser("run", help="execute a profile's runs (finished runs are skipped)")
    p.add_argument("--profile", required=True, help="smoke | mini | paper | a profile .yaml")
    p.add_argument("--only", default=None, help="glob of run names (plus the runs they need)")
    p.add_argument("--stage", default=None,
                   help="only the runs of this stage (e.g. pretrain, tune, t1, f2, ablations); "
                   "the stages they need must have run")
    p.add_argument("--force", action="store_true", help="re-execute finished runs too")
    p.add_argument("--results-dir", default=None,
                   help="records and notebooks here instead of the profile's results_dir "
                   "(checkpoints under DIR/work): a scratch run that leaves shipped results alone")
    p.set_defaults(func=_run)
    r = sub.add_parser("report", help="render the tables and figures from the profile's records")
    r.add_argument("--profile", required=True)
    r.add_argument("--results-dir", default=None, help="read records from here (see run)")
    r.set_defaults(func=_report)
    from . import bench_commands  # study plan; --add-init on run and report

    bench_commands.register(sub)
