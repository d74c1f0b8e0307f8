"""`nondeep lab width-depth`: what depth buys at a fixed budget (Zagoruyko & Komodakis 2016, Table 1 and
Figure 2, on Fashion-MNIST). For each depth n, the WRN-n-k whose k (fractional: each group's width is rounded)
brings it closest to the budget, parameters or FLOPs (--match), of the non-deep ParNet that sets it. Every net
gets the same recipe, data and seeds; each WRN is compared with the ParNet, and the shallowest (widest) WRN with
the deepest (thinnest), Zagoruyko & Komodakis's own question (Welch interval, verdict)."""

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

NAME = "width-depth"
DEFAULT_DEPTHS = (10, 16, 28, 40)
WIDEN_GRID = [round(0.25 + 0.01 * i, 2) for i in range(1176)]  # k from 0.25 to 12
INPUT_SIZE = (1, 28, 28)
COLUMNS = ["model", "depth", "widen_factor", "params", "mflops", "steps", "seeds", "test_accuracy", "ci95",
           "chosen_on_val_test_accuracy", "converged", "latency_ms", "latency_form"]


def wrn_for_budget(depth: int, target: int, match: str = "params", num_classes: int = 10,
                   in_chans: int = 1) -> tuple[float, int]:
    """(k, cost) of the WRN-depth-k closest to `target` parameters or FLOPs."""
    def build(k: float) -> nn.Module:
        with torch.device("meta"):
            return create_model("wide_resnet", depth=depth, widen_factor=k, num_classes=num_classes, in_chans=in_chans)
    return match_budget(build, target, WIDEN_GRID, cost_of(match, (in_chans, *INPUT_SIZE[1:])))


def run_width_depth_lab(out: str | Path | None = None, depths: Sequence[int] = DEFAULT_DEPTHS,
                        parnet: str = "parnet_tiny", budget: Budget | None = None, match: str = "params",
                        target: int | None = None, results: str | None = None,
                        command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget()
    started = time.perf_counter()
    target = target or model_cost(parnet, match, INPUT_SIZE, num_classes=10, in_chans=1)
    runs = [Run(parnet, parnet, columns={"widen_factor": None})]
    for depth in depths:
        k, cost = wrn_for_budget(depth, target, match)
        check_matched(f"WRN-{depth}", cost, target, match)
        runs.append(Run(f"WRN-{depth}-{k:g}", "wide_resnet", {"depth": depth, "widen_factor": k}, {"widen_factor": k}))
    folder = lab_folder(out, NAME)
    per_seed = run_all(folder, runs, budget)
    rows = aggregate(per_seed, latency_by_model(per_seed, budget), extra_columns=["widen_factor"])
    report = lab_report(NAME, budget, [*command, "--depths", *map(str, depths), "--parnet", parnet,
                        "--match", match, *budget.flags()], started, per_seed, rows,
                        comparison_pairs(runs, parnet), matched=match, match_target=target)
    notes = ("Each WRN-n-k takes the k whose model is closest to the ParNet's parameters or FLOPs (the matched "
             "quantity above). Depth is measured (longest conv/linear path); " + LATENCY_NOTE + ".")
    publish(report, folder, results, "Width vs depth at a fixed budget (nondeep lab width-depth)", COLUMNS, notes,
            plot=dict(x="depth", y="test_accuracy", title=f"Fashion-MNIST, matched on {match}",
                      xlabel="measured depth", ylabel="test accuracy (%), mean ± 95% CI"))
    return report, folder


def comparison_pairs(runs: Sequence[Run], parnet: str) -> list[tuple[str, str]]:
    """Each WRN against the ParNet; with two depths or more, the shallowest WRN against the deepest."""
    wrns = sorted(runs[1:], key=lambda run: run.model_kwargs["depth"])
    return [(run.label, parnet) for run in runs[1:]] + ([(wrns[0].label, wrns[-1].label)] if len(wrns) > 1 else [])


def cmd_width_depth(args: argparse.Namespace) -> None:
    run_width_depth_lab(out=args.out, depths=args.depths, parnet=args.parnet, budget=budget_from_args(args),
                        match=args.match, target=args.budget_target, results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="WRN-n-k over depth at the parameters (or FLOPs) of a ParNet, over seeds")
    p.add_argument("--depths", type=int, nargs="+", default=list(DEFAULT_DEPTHS),
                   help="WRN depths, 6N+4 (default: %(default)s)")
    p.add_argument("--parnet", default="parnet_tiny", help="the non-deep net; its size is the budget")
    p.add_argument("--budget-target", type=int, help="parameters or FLOPs to match (default: the ParNet's)")
    add_common_args(p, NAME, match=("params", "flops"))
    p.set_defaults(func=cmd_width_depth)
