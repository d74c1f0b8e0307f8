"""`nondeep lab width-depth`: what depth buys at a fixed parameter budget (Zagoruyko & Komodakis 2016, Table 1
and Figure 2, on Fashion-MNIST). For each depth n, the WRN-n-k whose k (fractional: each group's width is
rounded) brings it closest to the budget; plus the non-deep ParNet that sets the budget. Every net gets the
same recipe, data and seed; accuracy, measured depth and batch-1 latency (fused, timed side by side) are
reported against depth.
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

NAME = "width-depth"
DEFAULT_DEPTHS = (10, 16, 28, 40)
WIDEN_GRID = [round(0.25 + 0.01 * i, 2) for i in range(1176)]  # k from 0.25 to 12
COLUMNS = ["model", "depth", "widen_factor", "params", "mflops", "test_accuracy", "latency_ms", "train_seconds"]


def wrn_for_budget(depth: int, budget_params: int, num_classes: int = 10, in_chans: int = 1) -> tuple[float, int]:
    """(k, parameter count) of the WRN-depth-k closest to `budget_params`."""
    def build(k: float) -> nn.Module:
        with torch.device("meta"):
            return create_model("wide_resnet", depth=depth, widen_factor=k, num_classes=num_classes, in_chans=in_chans)
    return match_params(build, budget_params, WIDEN_GRID)


def run_width_depth_lab(out: str | Path | None = None, depths: Sequence[int] = DEFAULT_DEPTHS,
                        parnet: str = "parnet_tiny", budget: Budget | None = None,
                        budget_params: int | None = None, results: str | None = None,
                        command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget()
    folder, started = lab_folder(out, NAME), time.perf_counter()
    target = budget_params or param_count(parnet, num_classes=10, in_chans=1)
    runs = [Run(parnet, parnet, columns={"widen_factor": None})]
    for depth in depths:
        k, _ = wrn_for_budget(depth, target)
        runs.append(Run(f"WRN-{depth}-{k:g}", "wide_resnet", {"depth": depth, "widen_factor": k}, {"widen_factor": k}))
    rows = train_and_time(folder, runs, budget)
    report = {"meta": lab_meta(NAME, budget, [*command, "--depths", *map(str, depths), "--parnet", parnet,
                                              *budget.flags()], started, budget_params=target),
              "rows": rows}
    notes = (f"Parameter budget: {target / 1e6:.3f} M (the ParNet's). Depth is measured (longest conv/linear "
             "path); latency_ms is the fused model's batch-1 median, all models timed side by side in interleaved "
             "rounds. One seed per run: at the default budget a second seed moved a net by up to 3.7 points "
             "(docs/results/width-depth-seed1.md), so read small differences as noise.")
    publish(report, folder, results, "Width vs depth at a fixed parameter budget (nondeep lab width-depth)", COLUMNS,
            notes, plot=dict(x="depth", y="test_accuracy", title=f"Fashion-MNIST, {target / 1e6:.2f} M parameters "
                             "each", xlabel="measured depth", ylabel="test accuracy (%)"))
    return report, folder


def cmd_width_depth(args: argparse.Namespace) -> None:
    run_width_depth_lab(out=args.out, depths=args.depths, parnet=args.parnet, budget=budget_from_args(args),
                        budget_params=args.budget_params, results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="WRN-n-k over depth at the parameters of a ParNet (default budget: 18 min "
                       "measured on 1 thread of a busy 2-core machine)")
    p.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS),
                   help="WRN depths, 6N+4 (default: %(default)s)")
    p.add_argument("--parnet", default="parnet_tiny", help="the non-deep net; its size is the budget")
    p.add_argument("--budget-params", type=int, help="parameter budget (default: the ParNet's count)")
    add_common_args(p, NAME)
    p.set_defaults(func=cmd_width_depth)
