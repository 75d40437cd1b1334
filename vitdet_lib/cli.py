"""The ``vitdet-bench`` command line: one subcommand per library entry point.

Each subcommand lives beside the code it drives, in a module exposing
``register(subparsers) -> None``; the parser sets ``func`` to call with the parsed args.
Subcommands raise typed errors (``vitdet_lib.errors``); :func:`main` alone turns them into a
short message on stderr and an exit code (2 bad input, 1 failed run, 130 interrupted).
``--debug`` or ``VITDET_DEBUG=1`` re-raises instead, showing the traceback.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from vitdet_lib.errors import debug_enabled, describe

# module path of each subcommand group; a module that cannot be imported is an error, not a skip
COMMAND_MODULES = (
    "vitdet_lib.complexity",
    "vitdet_lib.bench",
    "vitdet_lib.engine.commands",
    "vitdet_lib.checkpoint.commands",
    "vitdet_lib.pretrain.commands",
    "vitdet_lib.pretrain.calibrate",
    "vitdet_lib.study.commands",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vitdet-bench",
        description="ViT detection transfer benchmark (Li et al. 2021) reproduction",
    )
    parser.add_argument("--debug", action="store_true",
                        help="show the traceback of an error (also: VITDET_DEBUG=1)")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as err:
            if err.name != name:  # a real missing dependency inside the module
                raise
            continue  # subcommand group not present in this checkout
        module.register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Run one subcommand; returns its exit code (errors become a message on stderr)."""
    args = build_parser().parse_args(argv)
    try:
        result = args.func(args)
    except (Exception, KeyboardInterrupt) as err:
        if args.debug or debug_enabled():
            raise
        message, code = describe(err)
        print(f"{parser_prog(args)}: error: {message}", file=sys.stderr)
        return code
    return int(result or 0)


def parser_prog(args: argparse.Namespace) -> str:
    """``vitdet-bench <subcommand>``, the prefix of error messages (as argparse's own)."""
    return f"vitdet-bench {args.command}"


if __name__ == "__main__":
    sys.exit(main())
