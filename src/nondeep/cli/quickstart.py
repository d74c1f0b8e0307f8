"""`nondeep quickstart`: the main job on the embedded default dataset."""

from __future__ import annotations

import argparse

from ..report import format_table
from .models import model_summary


def cmd_quickstart(args: argparse.Namespace) -> None:
    rows = [model_summary(name, (1, 28, 28), in_chans=1) for name in ("parnet_tiny", "preact_resnet_20")]
    print(format_table(rows))


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="the main job on Fashion-MNIST")
    p.set_defaults(func=cmd_quickstart)
