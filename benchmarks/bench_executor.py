"""A lab's runs on the local executor: the wall time of one 4-run smoke lab (parnet_tiny and the WRN-10 matched
to its parameters, 2 seeds each, as `nondeep lab width-depth --quick --seeds 2 --depths 10` trains them) run
one after another (1 worker) and on 2 workers, --threads 1 each, plus the 1-worker lab at 2 threads (torch's
default on 2 cores). The configurations alternate within each round so machine noise hits them all; the load
average is recorded beside each time. To keep it to ~2 minutes the runs read a cut of Fashion-MNIST (the first
--train-images training and --test-images test images) and train --max-train-samples images for one epoch.

    .venv/bin/python benchmarks/bench_executor.py --out docs/results
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import header, machine
from nondeep.data.fashion_mnist import load_fashion_mnist
from nondeep.experiments._lab import Budget, Run, param_count, run_all
from nondeep.experiments.width_depth import wrn_for_budget
from nondeep.report import format_table, write_json, write_text

CONFIGS = {"1 worker x 1 thread": (1, 1), "2 workers x 1 thread": (2, 1), "1 worker x 2 threads": (1, 2)}


def write_cut(folder: Path, train_images: int, test_images: int) -> Path:
    """The first images of each Fashion-MNIST split, in its IDX files (what --data-dir reads)."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, prefix, n in (("train", "train", train_images), ("test", "t10k", test_images)):
        images, labels = load_fashion_mnist(split)
        for kind, array in (("images", images[:n, 0]), ("labels", labels[:n])):
            array = array.numpy().astype("uint8")
            head = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
            with gzip.open(folder / f"{prefix}-{kind}-idx{array.ndim}-ubyte.gz", "wb") as f:
                f.write(head + array.tobytes())
    return folder


def markdown(report: dict) -> str:
    """executor.md from executor.json, with the verdict on the target computed from the numbers."""
    rows = {row["configuration"]: row for row in report["rows"]}
    ratio, target = rows["2 workers x 1 thread"]["vs_1_worker_1_thread"], report["target_ratio"]
    loads = [load for row in report["rows"] for pair in row["load_average_before_after"] for load in pair]
    cores = report["meta"]["cores"]
    if ratio <= target:
        verdict = f"2 workers finished the lab in {ratio}x the 1-worker time: the target (<= {target}x) is met."
    elif min(loads) >= cores:
        verdict = (f"2 workers took {ratio}x the 1-worker time: the target (<= {target}x) is not met here, and this "
                   f"machine cannot show it: its load average stayed between {min(loads)} and {max(loads)} on "
                   f"{cores} cores, so other processes kept every core busy and a second worker had no idle core "
                   "to run on. Rerun on an idle machine.")
    else:
        verdict = (f"2 workers took {ratio}x the 1-worker time: the target (<= {target}x) is not met (load average "
                   f"{min(loads)}-{max(loads)} on {cores} cores).")
    fastest = min(report["rows"], key=lambda row: row["median_seconds"])
    verdict += (f" Fastest here: {fastest['configuration']} ({fastest['vs_1_worker_1_thread']}x); "
                + ("so parallel runs are the way to use these cores." if fastest["workers"] > 1 else
                   "on this machine the cores are better spent inside one run (torch's intra-op threads) than on "
                   "runs side by side, which is why the CPU default is one worker."))
    return (header("Lab runs on the local executor", report["meta"]) +
            f"A 4-run lab ({', '.join(report['runs'])}; seeds 0, 1; 1 epoch on {report['max_train_samples']} images "
            f"of a cut of Fashion-MNIST: the first {report['train_images']} training, {report['test_images']} test "
            f"images), {report['rounds']} round(s), configurations alternated.\n\n" + format_table(report["rows"]) +
            f"\n\n{verdict}\n\nvs_1_worker_1_thread: median time over the 1-worker, 1-thread lab. Same rows "
            f"(accuracies, steps) from 1 and 2 workers: {report['same_rows_1_and_2_workers_at_1_thread']}. "
            "load_average_before_after: the machine's 1-minute load average before and after each lab (the lab "
            "itself adds up to its worker count); figures far above that mean other processes shared the cores and "
            "the times are contaminated.\n")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=1)
    parser.add_argument("--max-train-samples", type=int, default=1000)
    parser.add_argument("--train-images", type=int, default=5000)
    parser.add_argument("--test-images", type=int, default=1000)
    parser.add_argument("--out", default="docs/results")
    parser.add_argument("--render", action="store_true", help="only rewrite executor.md from --out's executor.json")
    args = parser.parse_args()
    if args.render:
        write_text(Path(args.out) / "executor.md", markdown(json.loads((Path(args.out) / "executor.json").read_text())))
        return
    k, _ = wrn_for_budget(10, param_count("parnet_tiny", num_classes=10, in_chans=1))
    runs = [Run("parnet_tiny", "parnet_tiny"), Run(f"WRN-10-{k:g}", "wide_resnet", {"depth": 10, "widen_factor": k})]
    times: dict[str, list[float]] = {name: [] for name in CONFIGS}
    loads: dict[str, list[list[float]]] = {name: [] for name in CONFIGS}
    rows_seen: dict[str, list] = {}
    with tempfile.TemporaryDirectory() as tmp:
        data = write_cut(Path(tmp) / "data", args.train_images, args.test_images)
        for r in range(args.rounds):
            order = list(CONFIGS) if r % 2 == 0 else list(reversed(CONFIGS))
            for name in order:
                workers, threads = CONFIGS[name]
                budget = Budget(epochs=1, max_train_samples=args.max_train_samples, seeds=2, data_dir=str(data),
                                threads=threads, workers=workers, progress=False)
                load_before = round(os.getloadavg()[0], 2)
                start = time.perf_counter()
                rows = run_all(Path(tmp) / f"lab-{r}-{workers}-{threads}", runs, budget)
                times[name].append(time.perf_counter() - start)
                loads[name].append([load_before, round(os.getloadavg()[0], 2)])
                rows_seen[name] = [(row["model"], row["seed"], row["test_accuracy"], row["steps"]) for row in rows]
                print(f"round {r + 1}: {name}: {times[name][-1]:.1f} s (load average {loads[name][-1]})")
    sequential = statistics.median(times["1 worker x 1 thread"])
    table = [{"configuration": name, "workers": CONFIGS[name][0], "threads_per_run": CONFIGS[name][1],
              "median_seconds": round(statistics.median(times[name]), 1), "seconds": [round(t, 1) for t in times[name]],
              "vs_1_worker_1_thread": round(statistics.median(times[name]) / sequential, 2),
              "load_average_before_after": loads[name]} for name in CONFIGS]
    report = {"meta": machine(), "runs": [r.label for r in runs], "seeds": 2,
              "max_train_samples": args.max_train_samples, "train_images": args.train_images,
              "test_images": args.test_images, "rounds": args.rounds, "rows": table,
              "same_rows_1_and_2_workers_at_1_thread": rows_seen["1 worker x 1 thread"] == rows_seen["2 workers x 1 thread"],
              "target_ratio": 0.7}
    write_json(Path(args.out) / "executor.json", report)
    write_text(Path(args.out) / "executor.md", markdown(report))
    print(format_table(table))


if __name__ == "__main__":
    main()
