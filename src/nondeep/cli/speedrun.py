"""`nondeep speedrun`: a depth <= 12 network to a target Fashion-MNIST accuracy in as few seconds as it can."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..experiments._lab import QUICK, Budget, LabError, lab_folder, on_gpu
from ..experiments.speedrun import DEFAULT_GRID, GPU_TIME_TARGET, NAME, run_speedrun
from ..train import load_config


def cmd_speedrun(args: argparse.Namespace) -> None:
    names = [Path(path).stem for path in args.config or []]
    if len(set(names)) < len(names):
        raise LabError(f"--config files name the recipes by their file names, and two share one ({names}): "
                       "rename one")
    config = {name: load_config(path) for name, path in zip(names, args.config)} if args.config else None
    images = QUICK["max_train_samples"] if args.quick else args.max_train_samples or None
    grid = args.epoch_grid or ([1] if args.quick else list(DEFAULT_GRID))
    budget = Budget(epochs=1, max_train_samples=images, seeds=args.seeds, seed=args.seed, val_split=args.val_split,
                    data_dir=args.data_dir, threads=args.threads, device=args.device, progress=args.progress,
                    cpu_bf16=args.cpu_bf16, compile=args.compile)
    time_target = args.time_target if args.time_target is not None else (GPU_TIME_TARGET if on_gpu(args.device)
                                                                          else None)
    if time_target is not None and time_target < 0:
        raise LabError(f"--time-target is in seconds, 0 for none, got {time_target:g}")
    command = ["nondeep", NAME, *(["--config", *args.config] if args.config else []), "--target", f"{args.target:g}",
               "--epoch-grid", *map(str, grid), "--margin", f"{args.margin:g}",
               *(["--tune-seeds", str(args.tune_seeds)] if len(set(grid)) > 1 or len(names) > 1 else []),
               "--seeds", str(args.seeds), "--seed", str(args.seed), "--val-split", f"{args.val_split:g}",
               *(["--max-train-samples", str(images)] if images else []),
               *(["--time-target", f"{time_target:g}"] if time_target is not None else []),
               *(["--device", args.device] if args.device != "auto" else []),
               *(["--threads", str(args.threads)] if args.threads else []),
               *(["--cpu-bf16"] if args.cpu_bf16 else []), *(["--compile"] if args.compile else []),
               *([] if args.warm_up else ["--no-warm-up"]),
               *(["--data-dir", args.data_dir] if args.data_dir else [])]
    run_speedrun(lab_folder(args.out, NAME), config, target=args.target, epoch_grid=grid, margin=args.margin,
                 tune_seeds=args.tune_seeds, time_target=time_target or None,  # 0: none, where time is not asked
                 budget=budget, results=args.results, warm_up=args.warm_up, command=command)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(NAME, help="a depth <= 12 network to a target Fashion-MNIST test accuracy in as few training "
                                  "seconds as it can: schedule chosen on validation, then timed over seeds")
    p.add_argument("--config", nargs="+", metavar="YAML",
                   help="YAML of TrainConfig fields: the recipe (default: parnet_tiny's, with flip test-time "
                        "augmentation; its epochs are chosen from --epoch-grid); several: candidate recipes (e.g. "
                        "batch sizes), each tuned on the grid, the one that reaches the bar on validation in the "
                        "fewest training seconds measured")
    p.add_argument("--target", type=float, default=94.0, help="test accuracy to reach, %% (default: %(default)s)")
    p.add_argument("--epoch-grid", type=int, nargs="+",
                   help=f"epoch counts tried on validation, shortest first (default: "
                        f"{' '.join(map(str, DEFAULT_GRID))}; 1 with --quick)")
    p.add_argument("--margin", type=float, default=0.5,
                   help="validation must reach target + margin (points) to choose a schedule (default: %(default)s)")
    p.add_argument("--tune-seeds", type=int, default=2, help="seeds per epoch count on validation (default: 2)")
    p.add_argument("--seeds", type=int, default=10, help="measured runs (default: %(default)s)")
    p.add_argument("--seed", type=int, default=0, help="the first measured seed (default: 0)")
    p.add_argument("--time-target", type=float,
                   help=f"seconds the mean training time must not pass; 0: none (default: {GPU_TIME_TARGET:g} on a "
                        "GPU, none on a CPU)")
    p.add_argument("--val-split", type=float, default=0.1, help="held out for choosing (default: %(default)s)")
    p.add_argument("--max-train-samples", type=int, help="train on the first N images (default: all)")
    p.add_argument("--quick", action="store_true", help="smoke test: 1000 images, epoch grid 1")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: %(default)s)")
    p.add_argument("--threads", type=int, help="torch threads on a CPU (default: torch's choice)")
    p.add_argument("--cpu-bf16", action="store_true", help="on a CPU with native bf16 (AVX512-BF16 or AMX), train "
                                                           "in bf16 autocast (docs/results/cpu_bf16.md)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training step")
    p.add_argument("--warm-up", action=argparse.BooleanOptionalAction, default=True,
                   help="compile a compiled recipe in an untimed warm-up run of a few steps before the timed runs, "
                        "as airbench does (--no-warm-up: each timed run's first epoch pays for it)")
    p.add_argument("--data-dir")
    p.add_argument("--out", help="run folder (default runs/lab-speedrun-<date>); finished runs are reused")
    p.add_argument("--results", help="also write speedrun.json/.md here (e.g. docs/results)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True)
    p.set_defaults(func=cmd_speedrun)
