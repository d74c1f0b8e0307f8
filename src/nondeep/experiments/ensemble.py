"""`nondeep lab ensemble`: an ensemble of N small nets vs one N-stream ParNet of the same parameters or FLOPs
(--match; the ParNet paper compares its streams with ensembles). The members are one-stream ParNets whose width
gives each about 1/N of the N-stream net's budget; the ensemble averages their softmax outputs. Each seed s
trains the N-stream net with seed s and a whole ensemble with seeds s, s + 1000, ...; the ensembles' test
accuracies over the seeds are compared with the N-stream nets' (Welch interval, verdict)."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import nn

from .. import measure
from ..checkpoint import load_model
from ..data import build_test_loader
from ..reparam import reparameterize_model
from ..train.evaluate import evaluate
from ..train.loop import resolve_device  # the lab times where it trains
from ._lab import Budget, Run, add_common_args, budget_from_args, check_matched, lab_folder, model_cost, run_all
from ._lab_latency import LATENCY_NOTE, checkpoint_model, fastest_latency
from ._lab_report import aggregate, lab_report, publish
from .streams import INPUT_SIZE, parnet_for_budget

NAME = "ensemble"
MEMBER_SEED_STRIDE = 1000  # member i of the ensemble for seed s trains with seed s + 1000 i
COLUMNS = ["model", "kind", "depth", "params", "mflops", "steps", "seeds", "test_accuracy", "ci95", "converged",
           "latency_ms", "latency_form"]


class SoftmaxEnsemble(nn.Module):
    """The log of the members' mean softmax: its argmax is the ensemble's vote, its NLL the ensemble's loss."""

    def __init__(self, members: Sequence[nn.Module]) -> None:
        super().__init__()
        self.members = nn.ModuleList(members)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([m(x).softmax(dim=-1) for m in self.members]).mean(dim=0)
        return probs.clamp_min(1e-12).log()


def load_ensemble(checkpoints: Sequence[str]) -> SoftmaxEnsemble:
    return SoftmaxEnsemble([reparameterize_model(load_model(path)[0]).eval() for path in checkpoints])


def run_ensemble_lab(out: str | Path | None = None, members: int = 3, base: str = "parnet_tiny",
                     budget: Budget | None = None, match: str = "params", results: str | None = None,
                     command: Sequence[str] = ("nondeep", "lab", NAME)) -> tuple[dict[str, Any], Path]:
    if members < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {members}")
    budget = budget or Budget()
    started = time.perf_counter()
    total = model_cost(base, match, INPUT_SIZE, num_streams=members, num_classes=10, in_chans=1)
    multiplier, cost = parnet_for_budget(base, 1, total // members, match)
    check_matched(f"a one-stream {base} member", cost * members, total, match)
    parnet = Run(f"{base} {members} streams", base, {"num_streams": members}, {"kind": "parnet"})
    member_runs = [Run(f"member {i + 1}: {base} 1 stream x{multiplier:g}", base,
                       {"num_streams": 1, "width_multiplier": multiplier}, {"kind": "member"},
                       seed_offset=MEMBER_SEED_STRIDE * i) for i in range(members)]
    folder = lab_folder(out, NAME)
    per_seed = run_all(folder, [parnet, *member_runs], budget)

    # one ensemble per seed, of the members trained for that seed; scored once on the test split
    test_loader = build_test_loader(budget.data, data_dir=budget.data_dir, batch_size=1024)
    label = f"ensemble of {members}"
    member_rows = [r for r in per_seed if r["kind"] == "member"]
    for seed in budget.seed_list:
        chosen = [r for r in member_rows if r["seed"] % MEMBER_SEED_STRIDE == seed % MEMBER_SEED_STRIDE]
        ensemble = load_ensemble([r["checkpoint"] for r in chosen])
        per_seed.append({"model": label, "kind": "ensemble", "seed": seed,
                         "test_accuracy": evaluate(ensemble, test_loader, torch.device("cpu"))["eval_top1"],
                         "depth": measure.depth(ensemble, INPUT_SIZE), "params": sum(r["params"] for r in chosen),
                         "mflops": round(sum(r["mflops"] for r in chosen), 2),
                         "steps": sum(r["steps"] for r in chosen)})
    first_parnet = next(r for r in per_seed if r["kind"] == "parnet")
    first_members = [r["checkpoint"] for r in member_rows[::budget.seeds]]
    latency = fastest_latency({parnet.label: checkpoint_model(first_parnet["checkpoint"]),
                               label: (load_ensemble(first_members), INPUT_SIZE)},
                              resolve_device(budget.device), budget.threads, budget.latency_forms)
    rows = aggregate(per_seed, latency, extra_columns=["kind"])
    report = lab_report(NAME, budget, [*command, "--members", str(members), "--base", base,
                        "--match", match, *budget.flags()], started, per_seed, rows,
                        [(label, parnet.label)], matched=match, match_target=total)
    notes = ("The ensemble averages its members' softmax, its members run one after the other; " + LATENCY_NOTE
             + ". Its params, MFLOPs and steps "
             "are the members' sums.")
    publish(report, folder, results, "Ensemble of small nets vs one multi-stream ParNet (nondeep lab ensemble)",
            COLUMNS, notes, plot=dict(x="mflops", y="test_accuracy", title=f"Fashion-MNIST: ensemble vs streams, "
                                      f"matched on {match}", xlabel="MFLOPs (fused, one image)",
                                      ylabel="test accuracy (%), mean ± 95% CI"))
    return report, folder


def cmd_ensemble(args: argparse.Namespace) -> None:
    run_ensemble_lab(out=args.out, members=args.members, base=args.base, budget=budget_from_args(args),
                     match=args.match, results=args.results)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="an ensemble of N one-stream ParNets vs one N-stream ParNet of the same "
                       "parameters (or FLOPs), over seeds")
    p.add_argument("--members", type=int, default=3, help="N: ensemble members and streams (default: %(default)s)")
    p.add_argument("--base", default="parnet_tiny", help="ParNet builder (default: %(default)s)")
    add_common_args(p, NAME, max_train_samples=10000, match=("params", "flops"))
    p.set_defaults(func=cmd_ensemble)
