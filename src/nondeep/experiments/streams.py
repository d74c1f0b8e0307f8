"""`nondeep lab streams`: one stream vs several at a fixed budget (the ParNet paper's branch study: at equal
parameters, 3 streams beat 1 and 2). Each stream count gets the width multiplier that brings it closest to the
parameters or FLOPs (--match) of the base net with the default 3 streams; each is compared with that net."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from ..models import create_model
from ._lab import (Budget, Run, add_common_args, budget_from_args, check_matched, cost_of, lab_folder,
                   match_budget, model_cost, run_all)
from ._lab_latency import LATENCY_NOTE, latency_by_model
from ._lab_report import aggregate, lab_report, publish

NAME = "streams"
DEFAULT_STREAMS = (1, 2, 3)
MULTIPLIER_GRID = [round(0.1 + 0.02 * i, 2) for i in range(496)]  # 0.1 to 10
INPUT_SIZE = (1, 28, 28)
COLUMNS = ["model", "num_streams", "width_multiplier", "depth", "params", "mflops", "steps", "seeds",
           "test_accuracy", "ci95", "chosen_on_val_test_accuracy", "converged", "latency_ms", "latency_form"]


def parnet_for_budget(base: str, num_streams: int, target: int, match: str = "params", num_classes: int = 10,
                      in_chans: int = 1, **kwargs: Any) -> tuple[float, int]:
    """(width multiplier, cost) of `base` with `num_streams` streams closest to `target` parameters or FLOPs."""
    def build(multiplier: float) -> nn.Module:
        with torch.device("meta"):
            return create_model(base, num_streams=num_streams, width_multiplier=multiplier, num_classes=num_classes,
                                in_chans=in_chans, **kwargs)
    cost = cost_of(match, (in_chans, *INPUT_SIZE[1:]))
    if cost(build(1.0)) == target:  # the base itself (its own width): no search, no odd multiplier in its name
        return 1.0, target
    return match_budget(build, target, MULTIPLIER_GRID, cost)


def stream_label(base: str, n: int, multiplier: float) -> str:
    return f"{base} {n} stream{'s' if n > 1 else ''} x{multiplier:g}"


def run_streams_lab(out: str | Path | None = None, streams: Sequence[int] = DEFAULT_STREAMS,
                    base: str = "parnet_tiny", budget: Budget | None = None, match: str = "params",
                    target: int | None = None, results: str | None = None,
                    command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget()
    started = time.perf_counter()
    target = target or model_cost(base, match, INPUT_SIZE, num_classes=10, in_chans=1)
    runs = []
    for n in streams:
        multiplier, cost = parnet_for_budget(base, n, target, match)
        check_matched(f"{base} with {n} streams", cost, target, match)
        runs.append(Run(stream_label(base, n, multiplier), base, {"num_streams": n, "width_multiplier": multiplier},
                        {"num_streams": n, "width_multiplier": multiplier}))
    folder = lab_folder(out, NAME)
    per_seed = run_all(folder, runs, budget)
    rows = aggregate(per_seed, latency_by_model(per_seed, budget),
                     extra_columns=["num_streams", "width_multiplier"])
    reference = max(runs, key=lambda r: r.columns["num_streams"]).label  # the most streams: the paper's choice
    report = lab_report(NAME, budget, [*command, "--streams", *map(str, streams), "--base", base,
                        "--match", match, *budget.flags()], started, per_seed, rows,
                        [(r.label, reference) for r in runs if r.label != reference], matched=match, match_target=target)
    notes = ("Each stream count uses the width multiplier whose model is closest to the matched quantity (widths "
             "are multiples of 8). Depth is measured; " + LATENCY_NOTE
             + " (the streams form runs a ParNet's streams side by side).")
    publish(report, folder, results, "One stream vs several at a fixed budget (nondeep lab streams)", COLUMNS, notes,
            plot=dict(x="num_streams", y="test_accuracy", title=f"Fashion-MNIST, matched on {match}",
                      xlabel="streams", ylabel="test accuracy (%), mean ± 95% CI"))
    return report, folder


def cmd_streams(args: argparse.Namespace) -> None:
    run_streams_lab(out=args.out, streams=args.streams, base=args.base, budget=budget_from_args(args),
                    match=args.match, target=args.budget_target, results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="ParNet with 1, 2, 3 streams at equal parameters (or FLOPs), over seeds")
    p.add_argument("--streams", type=int, nargs="+", default=list(DEFAULT_STREAMS),
                   help="stream counts (default: %(default)s)")
    p.add_argument("--base", default="parnet_tiny", help="ParNet builder; its default size is the budget")
    p.add_argument("--budget-target", type=int, help="parameters or FLOPs to match (default: the base model's)")
    add_common_args(p, NAME, max_train_samples=10000, match=("params", "flops"))  # 1-stream nets: up to 7x the FLOPs
    p.set_defaults(func=cmd_streams)
