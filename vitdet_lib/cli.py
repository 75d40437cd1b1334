"""The ``vitdet-bench`` command line: one subcommand per library entry point.

Each subcommand lives beside the code it drives, in a module exposing
``register(subparsers) -> None``; the parser sets ``func`` to call with the parsed args.
"""
from __future__ import annotations

import argparse
import importlib
import sys

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
    args = build_parser().parse_args(argv)
    result = args.func(args)
    return int(result or 0)


if __name__ == "__main__":
    sys.exit(main())
