"""Time to accuracy on Fashion-MNIST at equal size: parnet_tiny against pre-act ResNet-20 and -56 (and ResNet-18),
each with its epoch count (and, with --lr-grid, peak learning rate) chosen on validation, several seeds, the test
split read after every epoch only to see when the target was reached (nondeep.experiments.time_to_accuracy).

    .venv/bin/python benchmarks/bench_time_to_accuracy.py --runs runs/tta --out docs/results
"""

from __future__ import annotations

import argparse
import sys

from nondeep.experiments._lab import LR_WIDEN, Budget
from nondeep.experiments.time_to_accuracy import DEFAULT_MODELS, FINALISTS, run_time_to_accuracy


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), help="the first is the reference")
    parser.add_argument("--target", type=float, default=93.0, help="test accuracy to reach (%%)")
    parser.add_argument("--epoch-grid", nargs="+", type=int, default=[2, 4, 8],
                        help="planned epoch counts tried on validation")
    parser.add_argument("--lr-grid", nargs="+", type=float, default=[],
                        help="peak learning rates tried on validation with every epoch count (default: the recipe's)")
    parser.add_argument("--lr-widen", type=int, default=LR_WIDEN, metavar="N",
                        help="where the chosen rate sits at an edge of --lr-grid, try up to N more past that edge, one "
                        "at a time, the grid's ratio continued (default: %(default)s; 0: the grid alone)")
    parser.add_argument("--tune-seeds", type=int, default=1, metavar="N",
                        help="seeds of tuning: the grid on the first, its --finalists best schedules on all N (more "
                        "of the first seed's, one at a time, until one reaches the target on every seed), chosen on "
                        "their means (default: %(default)s)")
    parser.add_argument("--finalists", type=int, default=FINALISTS, help="see --tune-seeds (default: %(default)s)")
    parser.add_argument("--seeds", type=int, default=3, help="seeds of measuring")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--max-train-samples", type=int, default=0, help="0 = all")
    parser.add_argument("--cpu-bf16", action="store_true",
                        help="train in bf16 autocast on a CPU with native bf16 (AVX512-BF16 or AMX)")
    parser.add_argument("--data-dir")
    parser.add_argument("--runs", default="runs/time_to_accuracy", help="run folders; finished runs are reused")
    parser.add_argument("--out", help="also copy time_to_accuracy.json/.md here (e.g. docs/results)")
    args = parser.parse_args()
    if args.lr_widen < 0:
        parser.error(f"--lr-widen must be >= 0 (0: the grid alone), got {args.lr_widen}")
    for flag in ("seeds", "tune_seeds", "finalists"):
        if getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be >= 1, got {getattr(args, flag)}")
    budget = Budget(seeds=args.seeds, max_train_samples=args.max_train_samples or None, threads=args.threads,
                    device=args.device, data_dir=args.data_dir, progress=False, cpu_bf16=args.cpu_bf16)
    run_time_to_accuracy(args.runs, args.models, args.target, args.epoch_grid, budget, args.out,
                         command=["python", *sys.argv], lr_grid=args.lr_grid, lr_widen=args.lr_widen,
                         tune_seeds=args.tune_seeds, finalists=args.finalists)


if __name__ == "__main__":
    main()
