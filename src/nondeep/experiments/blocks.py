"""`nondeep lab blocks`: what the RepVGG-SSE block buys (the ParNet paper's block ablation, Table 7). The same
ParNet is trained with its three block types:
  rep_sse  the paper's: 3x3 conv-BN + 1x1 conv-BN, plus a BN branch gated by skip-squeeze-excitation, SiLU;
  rep      RepVGG: the same branches with the identity BN not gated (no SSE), so all of it folds;
  plain    one 3x3 conv-BN + SiLU per block (no training-time branches).
Fused for inference, rep and plain are the same network; only training differs.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

from ..models.blocks import BLOCK_TYPES
from ._lab import Budget, Run, add_common_args, budget_from_args, lab_folder, lab_meta, publish, train_and_time

NAME = "blocks"
COLUMNS = ["model", "block_type", "depth", "params", "fused_params", "mflops", "test_accuracy",
           "fused_test_accuracy", "latency_ms", "train_seconds"]


def run_blocks_lab(out: str | Path | None = None, block_types: Sequence[str] = BLOCK_TYPES,
                   base: str = "parnet_tiny", budget: Budget | None = None, results: str | None = None,
                   command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    budget = budget or Budget()
    folder, started = lab_folder(out, NAME), time.perf_counter()
    runs = [Run(f"{base} {t}", base, {"block_type": t}, {"block_type": t}) for t in block_types]
    rows = train_and_time(folder, runs, budget)
    report = {"meta": lab_meta(NAME, budget, [*command, "--block-types", *block_types, "--base", base,
                                              *budget.flags()], started),
              "rows": rows}
    notes = ("params: training form; fused_params: after reparameterisation. latency_ms is the fused model's "
             "batch-1 median, all models timed side by side; rep_sse keeps its gated BN branch after fusion, "
             "hence its extra latency.")
    publish(report, folder, results, "RepVGG-SSE vs RepVGG (no SSE) vs plain blocks (nondeep lab blocks)", COLUMNS,
            notes, plot=dict(x="latency_ms", y="test_accuracy", title="Fashion-MNIST: block types",
                             xlabel="fused batch-1 latency (ms)", ylabel="test accuracy (%)"))
    return report, folder


def cmd_blocks(args: argparse.Namespace) -> None:
    run_blocks_lab(out=args.out, block_types=args.block_types, base=args.base, budget=budget_from_args(args),
                   results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="ParNet with RepVGG-SSE, RepVGG and plain blocks (default budget: 9 min "
                       "measured on 1 thread of a busy 2-core machine)")
    p.add_argument("--block-types", nargs="+", choices=BLOCK_TYPES, default=list(BLOCK_TYPES))
    p.add_argument("--base", default="parnet_tiny", help="ParNet builder (default: %(default)s)")
    add_common_args(p, NAME)
    p.set_defaults(func=cmd_blocks)
