"""`nondeep lab streams`: one stream vs several at a fixed parameter count (the ParNet paper's branch study,
Table 8: at equal parameters, 3 streams beat 1 and 2). Each stream count gets the ParNet width multiplier
that brings it closest to the parameters of the default 3-stream net; widths round to multiples of 8, so the
counts match only roughly and the table gives each one. Same recipe, data and seed for all.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..models import create_model
from ._lab import (Budget, Run, add_common_args, budget_from_args, lab_folder, lab_meta, match_params, param_count,
                   publish, train_and_time)

NAME = "streams"
DEFAULT_STREAMS = (1, 2, 3)
MULTIPLIER_GRID = [round(0.25 + 0.05 * i, 2) for i in range(196)]  # 0.25 to 10
COLUMNS = ["model", "num_streams", "width_multiplier", "depth", "params", "mflops", "test_accuracy",
           "latency_ms", "train_seconds"]


def parnet_for_budget(base: str, num_streams: int, budget_params: int, num_classes: int = 10,
                      in_chans: int = 1, **kwargs: Any) -> tuple[float, int]:
    """(width multiplier, parameter count) of `base` with `num_streams` streams closest to `budget_params`."""
    def build(multiplier: float) -> nn.Module:
        with torch.device("meta"):
            return create_model(base, num_streams=num_streams, width_multiplier=multiplier, num_classes=num_classes,
                                in_chans=in_chans, **kwargs)
    return match_params(build, budget_params, MULTIPLIER_GRID)


def run_streams_lab(out: str | Path | None = None, streams: Sequence[int] = DEFAULT_STREAMS,
                    base: str = "parnet_tiny", budget: Budget | None = None, budget_params: int | None = None,
                    results: str | None = None,
                    command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget()
    folder, started = lab_folder(out, NAME), time.perf_counter()
    target = budget_params or param_count(base, num_classes=10, in_chans=1)
    runs = []
    for n in streams:
        multiplier, _ = parnet_for_budget(base, n, target)
        runs.append(Run(f"{base} {n} stream{'s' if n > 1 else ''} x{multiplier:g}", base,
                        {"num_streams": n, "width_multiplier": multiplier},
                        {"num_streams": n, "width_multiplier": multiplier}))
    rows = train_and_time(folder, runs, budget)
    report = {"meta": lab_meta(NAME, budget, [*command, "--streams", *map(str, streams), "--base", base,
                                              *budget.flags()], started, budget_params=target),
              "rows": rows}
    notes = (f"Parameter budget: {target / 1e6:.3f} M. Each stream count uses the width multiplier whose model is "
             "closest to it (widths are multiples of 8). Depth is measured; latency_ms is the fused model's batch-1 "
             "median with the streams run one after the other, all models timed side by side.")
    publish(report, folder, results, "One stream vs several at fixed parameters (nondeep lab streams)", COLUMNS, notes,
            plot=dict(x="num_streams", y="test_accuracy", title=f"Fashion-MNIST, about {target / 1e6:.2f} M "
                      "parameters each", xlabel="streams", ylabel="test accuracy (%)"))
    return report, folder


def cmd_streams(args: argparse.Namespace) -> None:
    run_streams_lab(out=args.out, streams=args.streams, base=args.base, budget=budget_from_args(args),
                    budget_params=args.budget_params, results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="ParNet with 1, 2, 3 streams at equal parameters (default budget: 29 min measured "
                       "on 2 threads of an idle 2-core machine, 38 min on 1 thread of a busy one; the 1-stream net, "
                       "all at full resolution, is most of it)")
    p.add_argument("--streams", type=int, nargs="+", default=list(DEFAULT_STREAMS),
                   help="stream counts (default: %(default)s)")
    p.add_argument("--base", default="parnet_tiny", help="ParNet builder; its default size is the budget")
    p.add_argument("--budget-params", type=int, help="parameter budget (default: the base model's count)")
    add_common_args(p, NAME, max_train_samples=10000)  # its wide one-stream nets cost up to 7x the FLOPs
    p.set_defaults(func=cmd_streams)
