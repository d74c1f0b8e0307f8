"""`nondeep lab blocks`: what the RepVGG-SSE block buys (the ParNet paper's block ablation, Table 7). The same
ParNet is trained with its three block types, each at the width that matches the rep_sse net's parameters (or
fused FLOPs, --match):
  rep_sse  the paper's: 3x3 conv-BN + 1x1 conv-BN, plus a BN branch gated by skip-squeeze-excitation, SiLU;
  rep      RepVGG: the same branches with the identity BN not gated (no SSE), so all of it folds;
  plain    one 3x3 conv-BN + SiLU per block (no training-time branches).
rep and plain are compared with rep_sse (Welch interval, verdict)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from ..models.blocks import BLOCK_TYPES
from ._lab import (Budget, Run, add_common_args, budget_from_args, check_matched, lab_folder, model_cost,
                   run_all)
from ._lab_latency import LATENCY_NOTE, latency_by_model
from ._lab_report import aggregate, lab_report, publish
from .streams import INPUT_SIZE, parnet_for_budget

NAME = "blocks"
COLUMNS = ["model", "block_type", "width_multiplier", "depth", "params", "fused_params", "mflops", "steps", "seeds",
           "test_accuracy", "ci95", "chosen_on_val_test_accuracy", "converged", "latency_ms", "latency_form"]


def run_blocks_lab(out: str | Path | None = None, block_types: Sequence[str] = BLOCK_TYPES,
                   base: str = "parnet_tiny", budget: Budget | None = None, match: str = "params",
                   results: str | None = None,
                   command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget()
    started = time.perf_counter()
    target = model_cost(base, match, INPUT_SIZE, num_classes=10, in_chans=1, block_type="rep_sse")
    runs = []
    for block_type in block_types:
        multiplier, cost = parnet_for_budget(base, 3, target, match, block_type=block_type)
        check_matched(f"{base} with {block_type} blocks", cost, target, match)
        runs.append(Run(f"{base} {block_type} x{multiplier:g}", base,
                        {"block_type": block_type, "width_multiplier": multiplier},
                        {"block_type": block_type, "width_multiplier": multiplier}))
    folder = lab_folder(out, NAME)
    per_seed = run_all(folder, runs, budget)
    rows = aggregate(per_seed, latency_by_model(per_seed, budget),
                     extra_columns=["block_type", "width_multiplier"])
    reference = next((r.label for r in runs if r.columns["block_type"] == "rep_sse"), runs[0].label)
    report = lab_report(NAME, budget, [*command, "--block-types", *block_types, "--base", base,
                        "--match", match, *budget.flags()], started, per_seed, rows,
                        [(r.label, reference) for r in runs if r.label != reference], matched=match, match_target=target)
    notes = ("Each block type takes the width multiplier whose net is closest to the rep_sse net's matched "
             "quantity. params: training form; fused_params: after reparameterisation. " + LATENCY_NOTE + "; rep_sse "
             "keeps its gated BN branch after fusion.")
    publish(report, folder, results, "RepVGG-SSE vs RepVGG (no SSE) vs plain blocks (nondeep lab blocks)", COLUMNS,
            notes, plot=dict(x="latency_ms", y="test_accuracy", title=f"Fashion-MNIST: block types, matched on {match}",
                             xlabel="batch-1 latency, fastest form (ms)", ylabel="test accuracy (%), mean ± 95% CI"))
    return report, folder


def cmd_blocks(args: argparse.Namespace) -> None:
    run_blocks_lab(out=args.out, block_types=args.block_types, base=args.base, budget=budget_from_args(args),
                   match=args.match, results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="ParNet with RepVGG-SSE, RepVGG and plain blocks at equal parameters, over seeds")
    p.add_argument("--block-types", nargs="+", choices=BLOCK_TYPES, default=list(BLOCK_TYPES))
    p.add_argument("--base", default="parnet_tiny", help="ParNet builder (default: %(default)s)")
    add_common_args(p, NAME, match=("params", "flops"))
    p.set_defaults(func=cmd_blocks)
