"""`nondeep lab ensemble`: an ensemble of N small nets vs one N-stream ParNet with the same parameters (the
ParNet paper compares its streams with ensembles). The members are one-stream ParNets whose width gives each
about 1/N of the N-stream net's parameters, trained from different seeds; the ensemble averages their softmax
outputs. Accuracy on the test split and batch-1 latency (members run one after the other, fused) are
measured side by side with the N-stream net's.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import measure
from ..bench import module_candidate
from ..checkpoint import load_model
from ..data import build_loaders
from ..reparam import reparameterize_model
from ..train.evaluate import evaluate
from ._lab import (Budget, Run, add_common_args, budget_from_args, checkpoint_candidate, lab_folder, lab_meta,
                   param_count, publish, time_side_by_side, train_and_time)
from .streams import parnet_for_budget

NAME = "ensemble"
COLUMNS = ["model", "kind", "depth", "params", "mflops", "test_accuracy", "latency_ms"]


class SoftmaxEnsemble(nn.Module):
    """The log of the members' mean softmax: its argmax is the ensemble's vote, its NLL the ensemble's loss."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).softmax(dim=-1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()


def run_ensemble_lab(out: str | Path | None = None, members: int = 3, base: str = "parnet_tiny",
                     budget: Budget | None = None, results: str | None = None,
                     command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    budget = budget or Budget()
    folder, started = lab_folder(out, NAME), time.perf_counter()
    total = param_count(base, num_streams=members, num_classes=10, in_chans=1)
    multiplier, _ = parnet_for_budget(base, 1, total // members)
    runs = [Run(f"{base} {members} streams", base, {"num_streams": members}, {"kind": "parnet"})]
    runs += [Run(f"member {i + 1}: {base} 1 stream x{multiplier:g}", base,
                 {"num_streams": 1, "width_multiplier": multiplier}, {"kind": "member"}, seed=budget.seed + i)
             for i in range(members)]
    rows = train_and_time(folder, runs, budget)

    loaded = [load_model(row["checkpoint"]) for row in rows[1:]]
    ensemble = SoftmaxEnsemble([reparameterize_model(model).eval() for model, _ in loaded])
    data = loaded[0][1]["data"]
    input_size = (data["in_chans"], *data["image_size"])
    _, test_loader, _ = build_loaders(budget.data, data_dir=budget.data_dir, batch_size=256, eval_batch_size=1024)
    accuracy = evaluate(ensemble, test_loader, torch.device("cpu"))["eval_top1"]
    label = f"ensemble of {members}"
    latency = time_side_by_side([checkpoint_candidate(rows[0]["checkpoint"], rows[0]["model"]),
                                 module_candidate(ensemble, label, "fused", input_size)], threads=budget.threads)
    rows[0]["latency_ms"] = latency[rows[0]["model"]]["infer_step_time"]  # re-timed beside the ensemble
    rows.insert(1, {"model": label, "kind": "ensemble", "depth": measure.depth(ensemble, input_size),
                    "params": sum(r["params"] for r in rows[1:]), "mflops": sum(r["mflops"] for r in rows[1:]),
                    "test_accuracy": accuracy,
                    "latency_ms": latency[label]["infer_step_time"]})
    report = {"meta": lab_meta(NAME, budget, [*command, "--members", str(members), "--base", base, *budget.flags()],
                               started),
              "rows": rows}
    notes = ("The ensemble averages its members' softmax; its latency runs the fused members one after the other. "
             "The N-stream ParNet and the ensemble are timed side by side (batch 1); the members' latencies come "
             "from the first timing round. Members are trained from seeds seed, seed+1, ...")
    publish(report, folder, results, "Ensemble of small nets vs one multi-stream ParNet (nondeep lab ensemble)",
            COLUMNS, notes, plot=dict(x="latency_ms", y="test_accuracy", title="Fashion-MNIST: ensemble vs streams",
                                      xlabel="fused batch-1 latency (ms)", ylabel="test accuracy (%)"))
    return report, folder


def cmd_ensemble(args: argparse.Namespace) -> None:
    run_ensemble_lab(out=args.out, members=args.members, base=args.base, budget=budget_from_args(args),
                     results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="an ensemble of N one-stream ParNets vs one N-stream ParNet of the same "
                       "parameters (default budget: 30 min measured on 1 thread of a busy 2-core machine)")
    p.add_argument("--members", type=int, default=3, help="N: ensemble members and streams (default: %(default)s)")
    p.add_argument("--base", default="parnet_tiny", help="ParNet builder (default: %(default)s)")
    add_common_args(p, NAME, max_train_samples=10000)  # its wide one-stream nets cost up to 7x the FLOPs
    p.set_defaults(func=cmd_ensemble)
