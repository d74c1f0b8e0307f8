"""The `nondeep` command: a thin layer over the Python API, one module a sub-command.

Each module in COMMANDS has `register(subparsers)`, which adds its parser and sets `func`. Errors a user can
fix (NondeepError) print one line on stderr and exit with status 2.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from typing import Sequence

from ..errors import NondeepError

COMMANDS = ["models", "train", "distill", "quickstart", "speedrun", "lab", "export", "bench"]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nondeep", description="Non-deep neural networks: build, measure, "
                                     "train and compare ParNet, Wide ResNets and mimic students.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"{__name__}.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args) or 0
    except NondeepError as err:
        print(f"nondeep: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print(f"nondeep: interrupted {err}".rstrip(), file=sys.stderr)
        return 130
