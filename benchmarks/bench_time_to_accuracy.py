"""Time to accuracy on Fashion-MNIST: wall-clock training time until the test accuracy first reaches the
target, a depth <= 12 model against torchvision's ResNet-18 adapted to 28x28 (resnet18_small_image), same
pipeline and recipe. The runs go side by side, one thread each, so the machine's load hits both alike.

    .venv/bin/python benchmarks/bench_time_to_accuracy.py --out docs/results

Each model trains with its own planned epoch count (the one-cycle schedule spans it); test accuracy is
measured after every epoch and training seconds exclude evaluation.
"""

from __future__ import annotations

import argparse
import csv
import os
import subprocess
import sys
import time
from pathlib import Path

from _common import header, machine
from nondeep.report import format_table, write_json, write_text


def time_to_target(metrics_csv: Path, target: float) -> tuple[float | None, int | None, float, float]:
    """(seconds until the first epoch at >= target, that epoch, best accuracy, total seconds)."""
    seconds, reached, epoch_reached, best = 0.0, None, None, 0.0
    with open(metrics_csv) as f:
        for row in csv.DictReader(f):
            seconds += float(row["epoch_seconds"])
            best = max(best, float(row["eval_top1"]))
            if reached is None and float(row["eval_top1"]) >= target:
                reached, epoch_reached = seconds, int(row["epoch"])
    return reached, epoch_reached, best, seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["parnet_tiny", "resnet18_small_image"])
    parser.add_argument("--epochs", nargs="+", type=int, default=[8, 2], help="planned epochs, one per model")
    parser.add_argument("--target", type=float, default=93.0)
    parser.add_argument("--threads", type=int, default=1, help="threads per run")
    parser.add_argument("--runs", default="runs/time_to_accuracy")
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--timeout-min", type=float, default=120.0,
                        help="wall-clock limit for all runs together; a run still going is stopped (SIGTERM) "
                             "and reported with the epochs it finished")
    args = parser.parse_args()
    procs, deadline = [], time.monotonic() + args.timeout_min * 60
    for model, epochs in zip(args.models, args.epochs):
        out = Path(args.runs) / model
        cmd = [sys.executable, "-m", "nondeep.cli", "train", "--model", model, "--epochs", str(epochs),
               "--threads", str(args.threads), "--out", str(out), "--no-progress", "--seed", "0"]
        if (out / "last.safetensors").exists():
            cmd.append("--resume")
        Path(args.runs).mkdir(parents=True, exist_ok=True)
        log = open(Path(args.runs) / f"{model}.log", "a")
        procs.append((model, epochs, out, subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT,
                                                           env=dict(os.environ, OMP_NUM_THREADS=str(args.threads)))))
    for *_, proc in procs:  # one deadline for all runs, counted from their common start
        try:
            proc.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            proc.terminate()  # SIGTERM: the trainer checkpoints and stops; what it measured is kept
            proc.wait()
    rows = []
    for model, epochs, out, proc in procs:
        reached, epoch, best, total = time_to_target(out / "metrics.csv", args.target)
        rows.append({"model": model, "epochs_planned": epochs, "epochs_done": sum(1 for _ in open(out / "metrics.csv")) - 1,
                     "best_test_top1": best, "minutes_to_target": reached / 60 if reached else None,
                     "epoch_reached": epoch, "train_minutes": total / 60, "threads": args.threads})
    first, second = rows[0], rows[1] if len(rows) > 1 else None
    if second and first["minutes_to_target"]:
        other = second["minutes_to_target"] or second["train_minutes"]
        first["speedup_vs_" + second["model"]] = other / first["minutes_to_target"]
        first["speedup_is_lower_bound"] = second["minutes_to_target"] is None
    meta = machine()
    write_json(Path(args.out) / "time_to_accuracy.json", {"meta": meta, "target": args.target, "rows": rows})
    note = (f"\nTarget: {args.target}% Fashion-MNIST test accuracy. Minutes are training time (evaluation excluded), "
            f"{args.threads} thread(s) per run, the runs side by side. When the baseline never reaches the target, "
            f"the speed-up is a lower bound (its whole training time over the ParNet's time to target).\n")
    write_text(Path(args.out) / "time_to_accuracy.md", header("Time to accuracy", meta) + format_table(rows) + note)
    print(format_table(rows))


if __name__ == "__main__":
    main()
