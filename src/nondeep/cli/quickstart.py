"""`nondeep quickstart`: the main job on the embedded default dataset (Fashion-MNIST)."""

from __future__ import annotations

import argparse
from ..experiments.quickstart import QUICKSTART_MODELS, run_quickstart
from ..report import format_table


def cmd_quickstart(args: argparse.Namespace) -> None:
    command = ["nondeep", "quickstart", *(["--models", *args.models] if args.models != list(QUICKSTART_MODELS) else []),
               *(["--epochs", str(args.epochs)] if args.epochs != 1 else []),
               *(["--out", args.out] if args.out else []),
               *(["--data-dir", args.data_dir] if args.data_dir else []),
               *(["--max-train-samples", str(args.max_train_samples)] if args.max_train_samples else []),
               *(["--seed", str(args.seed)] if args.seed else [])]
    rows, out = run_quickstart(out=args.out, models=args.models, epochs=args.epochs, data_dir=args.data_dir,
                               max_train_samples=args.max_train_samples, seed=args.seed, command=command)
    print(format_table(rows))
    print(f"\nwritten under {out}: quickstart.json, quickstart.md, quickstart.png, and one run folder per model "
          f"(checkpoints, metrics.csv, summary.json, curves.png)")


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("quickstart", help="train a depth-12 ParNet and a deep thin ResNet on Fashion-MNIST and "
                       "compare accuracy, depth, size, FLOPs and latency (~10 min on 2 CPU cores)")
    p.add_argument("--models", nargs="+", default=list(QUICKSTART_MODELS))
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--out", help="output folder (default runs/quickstart-<date>)")
    p.add_argument("--data-dir")
    p.add_argument("--max-train-samples", type=int)
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=cmd_quickstart)
