"""Does training in bf16 on the CPU (`--cpu-bf16`) cost accuracy? One model trained in float32 and in bf16
autocast on the same budget and seeds (the labs' machinery: validation held out, the test split read once per
run, Student-t intervals, a Welch verdict computed from the data), on a CPU with native bf16 (AVX512-BF16 or
AMX). Its speed is bench_train_throughput.py's, timed in alternated rounds; the images/s here are each run's own
(the runs go one after another), shown beside the accuracy, not compared.

    .venv/bin/python benchmarks/bench_cpu_bf16.py --threads 2 --runs runs/cpu-bf16 --out docs/results
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

from nondeep.experiments._lab import Budget, Run, _history, run_all
from nondeep.experiments._lab_report import aggregate, lab_report, publish
from nondeep.stats import estimate
from nondeep.hardware import native_cpu_bf16

NAME = "cpu_bf16"
COLUMNS = ["model", "precision", "depth", "params", "steps", "seeds", "test_accuracy", "ci95",
           "chosen_on_val_test_accuracy", "converged", "train_images_per_sec"]


def images_per_sec(run_folder: Path) -> float:
    """A run's training images/s over all its epochs (evaluation excluded), from its metrics.csv."""
    history = _history(run_folder)
    seconds = sum(row["epoch_seconds"] for row in history)
    return sum(row["train_images_per_sec"] * row["epoch_seconds"] for row in history) / seconds


def compare_precisions(folder: Path, model: str, budget: Budget, results: str | None,
                       command: list[str]) -> dict[str, Any]:
    started = time.perf_counter()
    float32, bf16 = f"{model} float32", f"{model} bf16"
    runs = [Run(float32, model, columns={"precision": "float32"}),
            Run(bf16, model, columns={"precision": "bf16 autocast"}, recipe={"cpu_bf16": True})]
    per_seed = run_all(folder, runs, budget)
    for row in per_seed:
        row["train_images_per_sec"] = round(images_per_sec(Path(row["checkpoint"]).parent), 1)
    rows = aggregate(per_seed, extra_columns=["precision"])
    for row in rows:
        row["train_images_per_sec"] = round(estimate(
            [r["train_images_per_sec"] for r in per_seed if r["model"] == row["model"]]).mean, 1)
    report = lab_report(NAME, budget, command, started, per_seed, rows, [(bf16, float32)])
    publish(report, folder, results, f"Training in bf16 on the CPU: what it costs in accuracy ({model})", COLUMNS,
            "train_images_per_sec: each run's training images/s over its epochs (evaluation excluded), mean over "
            "the seeds; the runs went one after another, so the speed-up is measured by "
            "benchmarks/bench_train_throughput.py (alternated rounds), not here. bf16: torch.autocast on the CPU "
            "(weights, optimizer and loss in float32); evaluation in float32.",
            plot=dict(x="train_images_per_sec", y="test_accuracy", title=f"{model}: float32 vs bf16 training (CPU)",
                      xlabel="training images/s (each run's own)", ylabel="test accuracy (%), mean ± 95% CI"))
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="parnet_tiny")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--max-train-samples", type=int, default=20000, help="0 = all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    parser.add_argument("--data-dir")
    parser.add_argument("--runs", default="runs/cpu-bf16", help="run folders; finished runs are reused")
    parser.add_argument("--out", help="also copy cpu_bf16.json/.md/.png here (e.g. docs/results)")
    args = parser.parse_args()
    if not native_cpu_bf16():
        parser.error("this CPU has no native bf16 (AVX512-BF16 or AMX): there is nothing to measure here")
    budget = Budget(epochs=args.epochs, max_train_samples=args.max_train_samples or None, seeds=args.seeds,
                    threads=args.threads, device="cpu", data_dir=args.data_dir, progress=False, workers=1)
    compare_precisions(Path(args.runs), args.model, budget, args.out, command=["python", *sys.argv])


if __name__ == "__main__":
    main()
