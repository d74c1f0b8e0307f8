"""`nondeep lab NAME`: experiments that train several models and write a table, JSON and a plot.

Each lab is a module in nondeep.experiments with `register(lab_subparsers)`; LABS lists them.
"""

from __future__ import annotations

import argparse
import importlib

LABS: list[str] = ["mimic", "width_depth", "streams", "ensemble", "blocks", "scaling", "pareto", "summary"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("lab", help="the papers' experiments as commands (each writes JSON, markdown and a plot)")
    labs = p.add_subparsers(dest="lab", required=True, metavar="LAB")
    for name in LABS:
        importlib.import_module(f"nondeep.experiments.{name}").register(labs)
